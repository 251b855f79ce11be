"""Confusion counts and scores against plain numpy, including empty-class edge cases."""

import jax
import numpy as np
import pytest

from jaxswin import metrics


def np_scores(pred, mask):
    """Scores from boolean arrays, each ratio written out with the module's empty convention."""
    pred, mask = pred.astype(bool).ravel(), mask.astype(bool).ravel()

    def iou(a, b):
        union = np.sum(a | b)
        return np.sum(a & b) / union if union else 1.0

    tp = np.sum(pred & mask)
    precision = tp / pred.sum() if pred.sum() else float(not mask.any())
    recall = tp / mask.sum() if mask.sum() else float(not pred.any())
    f1 = 2 * tp / (pred.sum() + mask.sum()) if pred.sum() + mask.sum() else 1.0
    iou_fg, iou_bg = iou(pred, mask), iou(~pred, ~mask)
    return {
        "miou": (iou_fg + iou_bg) / 2,
        "iou_fg": iou_fg,
        "iou_bg": iou_bg,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": np.mean(pred == mask),
    }


def _random(rng, shape, p):
    return rng.random(shape) < p


def test_confusion_counts_match_numpy():
    rng = np.random.default_rng()
    pred, mask = _random(rng, (4, 9, 7, 1), 0.4), _random(rng, (4, 9, 7, 1), 0.3)
    counts = np.asarray(jax.jit(metrics.confusion)(pred, mask))
    expected = [
        np.sum(pred & mask), np.sum(pred & ~mask), np.sum(~pred & mask), np.sum(~pred & ~mask)
    ]
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.float32


def test_weight_drops_padding_rows():
    rng = np.random.default_rng()
    pred, mask = _random(rng, (5, 6, 6, 1), 0.5), _random(rng, (5, 6, 6, 1), 0.5)
    weight = np.array([1, 1, 1, 0, 0], np.float32)
    got = metrics.confusion(pred, mask, weight)
    np.testing.assert_array_equal(got, metrics.confusion(pred[:3], mask[:3]))


def test_scores_of_the_set_sum_batches_not_average_them():
    rng = np.random.default_rng()
    batches = [(_random(rng, (3, 8, 8), 0.5), _random(rng, (3, 8, 8), p)) for p in (0.1, 0.6, 0.0)]
    counts = [np.asarray(metrics.confusion(p, m)) for p, m in batches]
    got = metrics.summarize(counts)
    expected = np_scores(np.stack([p for p, _ in batches]), np.stack([m for _, m in batches]))
    assert set(got) == set(metrics.KEYS)
    for key in metrics.KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


FILLS = {
    "empty": lambda rng, shape: np.zeros(shape, bool),
    "full": lambda rng, shape: np.ones(shape, bool),
    "random": lambda rng, shape: _random(rng, shape, 0.4),
}


@pytest.mark.parametrize(
    "pred_fill,mask_fill",
    [
        ("empty", "empty"),
        ("random", "empty"),
        ("empty", "random"),
        ("full", "full"),
        ("full", "empty"),
        ("empty", "full"),
    ],
)
def test_empty_class_edge_cases(pred_fill, mask_fill):
    rng = np.random.default_rng()
    pred, mask = FILLS[pred_fill](rng, (2, 5, 5)), FILLS[mask_fill](rng, (2, 5, 5))
    got = metrics.summarize(metrics.confusion(pred, mask))
    expected = np_scores(pred, mask)
    for key in metrics.KEYS:
        assert got[key] == pytest.approx(expected[key]), key


def test_known_edge_values():
    empty = np.zeros((1, 4, 4), bool)
    some = empty.copy()
    some[0, 0, 0] = True
    # Nothing to find and nothing found: perfect.
    assert metrics.summarize(metrics.confusion(empty, empty)) == {k: 1.0 for k in metrics.KEYS}
    # A landslide missed entirely: no predicted positives, precision 0.
    missed = metrics.summarize(metrics.confusion(empty, some))
    assert missed["precision"] == 0.0 and missed["recall"] == 0.0 and missed["iou_fg"] == 0.0
    assert missed["iou_bg"] == pytest.approx(15 / 16)
    # A false alarm on an empty tile: recall 0 by convention, background IoU 15/16.
    alarm = metrics.summarize(metrics.confusion(some, empty))
    assert alarm["recall"] == 0.0 and alarm["precision"] == 0.0 and alarm["f1"] == 0.0
    assert alarm["miou"] == pytest.approx((0 + 15 / 16) / 2)
