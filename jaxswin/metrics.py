"""Binary segmentation scores counted over all pixels of a set, as the MARS-LS challenge ranks.

:func:`confusion` counts one batch on the device (inside a jitted step); the host collects the
counts of every batch and :func:`summarize` adds them up in float64 and turns them into scores,
so the scores are those of the whole set, not a mean over tiles.

Empty-class convention: a ratio whose denominator is zero scores 1.0 when nothing was there to
get wrong and 0.0 otherwise. So the IoU of a class absent from both prediction and truth is 1.0;
precision with no predicted positives is 1.0 if the truth has none either, else 0.0; recall with
no true positives in the truth is 1.0 if none were predicted, else 0.0; F1 = 2TP / (2TP+FP+FN)
likewise 1.0 when both are empty.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

KEYS = ("miou", "iou_fg", "iou_bg", "f1", "precision", "recall", "accuracy")


def confusion(pred, mask, weight=None):
    """[tp, fp, fn, tn] of boolean (B, ...) prediction and truth, float32, samples weighted.

    `weight` (B,) scales each sample's counts (0 drops a padding row). Float32 counts are
    exact while each stays below 2**24, far above one batch of tiles.
    """
    pred, mask = jnp.asarray(pred, bool), jnp.asarray(mask, bool)
    cells = jnp.stack([pred & mask, pred & ~mask, ~pred & mask, ~pred & ~mask])
    per_sample = jnp.sum(cells.reshape(4, pred.shape[0], -1), axis=-1, dtype=jnp.float32)
    if weight is None:
        return jnp.sum(per_sample, axis=1)
    return per_sample @ jnp.asarray(weight, jnp.float32)


def _ratio(numerator, denominator, errors):
    """numerator / denominator; 0 / 0 is 1.0 if there were no `errors` to make, else 0.0."""
    if denominator > 0:
        return float(numerator / denominator)
    return 0.0 if errors > 0 else 1.0


def summarize(counts) -> dict[str, float]:
    """Scores of counts [tp, fp, fn, tn] (any leading axes, e.g. one row per batch, are summed)."""
    tp, fp, fn, tn = np.asarray(counts, np.float64).reshape(-1, 4).sum(axis=0)
    iou_fg = _ratio(tp, tp + fp + fn, 0)
    iou_bg = _ratio(tn, tn + fn + fp, 0)
    return {
        "miou": (iou_fg + iou_bg) / 2,
        "iou_fg": iou_fg,
        "iou_bg": iou_bg,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 0),
        "precision": _ratio(tp, tp + fp, fn),
        "recall": _ratio(tp, tp + fn, fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, 0),
    }
