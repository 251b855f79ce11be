"""Every loss against numpy formulas written from the papers, plus known values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import losses
from jaxswin.errors import ConfigError

SHAPE = (3, 12, 10, 1)
POS_WEIGHT = 1.86


def _random_batch(seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, shape).astype(np.float32)
    mask = (rng.random(shape[:3] + (1,)) < 0.35).astype(np.float32)
    return logits, mask


# numpy references -----------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def np_bce(z, y, w=1.0):
    log_p, log_not_p = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
    return np.mean(-(w * y * log_p + (1 - y) * log_not_p))


def np_focal(z, y, alpha=0.25, gamma=2.0):
    p = _sigmoid(z)
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    return np.mean(-alpha_t * (1 - p_t) ** gamma * np.log(p_t))


def np_tversky(z, y, alpha, beta):
    p = _sigmoid(z)
    tp, fp, fn = np.sum(p * y), np.sum(p * (1 - y)), np.sum((1 - p) * y)
    return 1 - tp / (tp + alpha * fp + beta * fn)


def np_dice(z, y):
    p = _sigmoid(z)  # eq. 5
    return 1 - 2 * np.sum(p * y) / (np.sum(p) + np.sum(y))


def np_soft_iou(z, y):
    p = _sigmoid(z)
    inter = np.sum(p * y)
    return 1 - inter / (np.sum(p) + np.sum(y) - inter)


def np_gradient(x):
    """3x3 dilation minus erosion; edge replication keeps the tile border from being an edge."""
    padded = np.pad(x[..., 0], ((0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    return (windows.max(axis=(-2, -1)) - windows.min(axis=(-2, -1)))[..., None]


def np_boundary_dice(z, y):
    pe, ye = np_gradient(_sigmoid(z)), np_gradient(y)
    return 1 - 2 * np.sum(pe * ye) / (np.sum(pe) + np.sum(ye))


def np_lovasz_hinge(z, y):
    """Berman et al., Alg. 1: sort hinge errors, weight by the Jaccard loss of each prefix set."""
    z, y = z.reshape(-1).astype(np.float64), y.reshape(-1)
    errors = 1 - z * (2 * y - 1)
    order = np.argsort(-errors, kind="stable")
    positives = y.sum()
    loss, previous = 0.0, 0.0
    for i in range(1, len(order) + 1):
        prefix = order[:i]  # the i pixels taken as mispredicted
        delta = i / (positives + np.sum(1 - y[prefix]))  # |M| / |{y=1} ∪ M|
        loss += max(errors[order[i - 1]], 0.0) * (delta - previous)
        previous = delta
    return loss


REFERENCES = {
    "bce": np_bce,
    "dice": np_dice,
    "bce_dice": lambda z, y: (np_bce(z, y) + np_dice(z, y)) / 2,
    "bce_w_dice": lambda z, y: (np_bce(z, y, POS_WEIGHT) + np_dice(z, y)) / 2,
    "focal": np_focal,
    "focal_dice": lambda z, y: (np_focal(z, y) + np_dice(z, y)) / 2,
    "soft_iou": np_soft_iou,
    "bce_soft_iou": lambda z, y: (np_bce(z, y) + np_soft_iou(z, y)) / 2,
    "tversky": lambda z, y: np_tversky(z, y, 0.3, 0.7),
    "dice_boundary_dice": lambda z, y: (np_dice(z, y) + np_boundary_dice(z, y)) / 2,
    "dice_lovasz": lambda z, y: (np_dice(z, y) + np_lovasz_hinge(z, y)) / 2,
    "bce_w_dice_lovasz": lambda z, y: (
        np_bce(z, y, POS_WEIGHT) + np_dice(z, y) + np_lovasz_hinge(z, y)
    )
    / 3,
}


def test_every_name_has_a_reference():
    assert set(losses.NAMES) == set(REFERENCES)


@pytest.mark.parametrize("name", losses.NAMES)
def test_loss_matches_numpy(name):
    seed = np.random.default_rng().integers(1 << 30)
    logits, mask = _random_batch(seed)
    got = float(losses.get(name)(jnp.asarray(logits), jnp.asarray(mask), POS_WEIGHT))
    # ε = 1e-7 and float32 sums move the overlap losses by ~1e-6 at most.
    np.testing.assert_allclose(got, REFERENCES[name](logits, mask), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", losses.NAMES)
def test_confident_correct_prediction_costs_nothing(name):
    _, mask = _random_batch(np.random.default_rng().integers(1 << 30))
    logits = np.where(mask > 0, 30.0, -30.0).astype(np.float32)
    got = float(losses.get(name)(logits, mask, POS_WEIGHT))
    assert got == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", ["dice", "soft_iou", "tversky", "dice_boundary_dice"])
def test_perfect_prediction_of_an_empty_batch_costs_nothing(name):
    # Only with ε = 1e-7 in the numerator too (eq. 5 alone gives 1); the predicted mass must be
    # far below ε, hence very confident logits.
    mask = np.zeros(SHAPE, np.float32)
    assert float(losses.get(name)(np.full(SHAPE, -60.0, np.float32), mask, 1.0)) < 1e-5


def test_overlap_losses_sum_over_the_batch_not_per_tile():
    # Tile 0 is all landslide and predicted so; tile 1 is background predicted as landslide.
    mask = np.zeros((2, 4, 4, 1), np.float32)
    mask[0] = 1.0
    logits = np.full((2, 4, 4, 1), 30.0, np.float32)
    # Batch-wide: 1 - 2*16 / (32 + 16) = 1/3; a per-tile mean would give (0 + 1) / 2.
    assert float(losses.get("dice")(logits, mask, 1.0)) == pytest.approx(1 / 3, rel=1e-5)


def test_lovasz_of_hard_errors_is_the_jaccard_loss():
    # Lovász extension at an indicator vector equals the set function: with hinge errors of
    # exactly 1 on a set M of pixels and <= 0 elsewhere, the loss is |M| / |{y=1} ∪ M|.
    rng = np.random.default_rng()
    mask = (rng.random((2, 8, 8, 1)) < 0.4).astype(np.float32)
    wrong = rng.random(mask.shape) < 0.2
    logits = np.where(wrong, 0.0, np.where(mask > 0, 5.0, -5.0)).astype(np.float32)
    expected = wrong.sum() / np.sum((mask > 0) | wrong)
    got = float(losses.lovasz_hinge(jnp.asarray(logits), jnp.asarray(mask), 1.0))
    assert got == pytest.approx(expected, rel=1e-6)


def test_boundary_is_the_mask_outline_not_the_tile_edge():
    mask = np.zeros((1, 6, 6, 1), np.float32)
    mask[0, 2:4, 2:4] = 1.0
    edge = np.asarray(losses.boundary(jnp.asarray(mask)))[0, ..., 0]
    # Every pixel within one step of the square's border, inside or out; nothing at the rim.
    assert edge.sum() == 16 and edge[0].sum() == 0 and edge[:, 0].sum() == 0
    assert np.all(edge[1:5, 1:5] == 1)


def test_pos_weight_scales_the_positive_term():
    logits, mask = _random_batch(np.random.default_rng().integers(1 << 30))
    loss = losses.get("bce_w_dice")
    slope = float(loss(logits, mask, 3.0)) - float(loss(logits, mask, 2.0))
    positive_term = np.mean(mask * np.logaddexp(0.0, -logits)) / 2  # ½ of one w+ unit
    assert slope == pytest.approx(positive_term, rel=1e-4)


def test_deep_supervision_heads_are_averaged():
    rng = np.random.default_rng()
    logits, mask = _random_batch(rng.integers(1 << 30), shape=(2, 8, 8, 3))
    loss = losses.get("bce_w_dice_lovasz")
    each = [float(loss(logits[..., k : k + 1], mask, POS_WEIGHT)) for k in range(3)]
    assert float(loss(logits, mask, POS_WEIGHT)) == pytest.approx(np.mean(each), rel=1e-6)


@pytest.mark.parametrize("name", losses.NAMES)
def test_gradients_are_finite_in_bf16_and_at_extreme_logits(name):
    logits, mask = _random_batch(np.random.default_rng().integers(1 << 30))
    logits[0, :2] = 200.0
    logits[1, :2] = -200.0
    grad_fn = jax.jit(jax.grad(lambda z: losses.get(name)(z, mask, POS_WEIGHT)))
    for dtype in (jnp.float32, jnp.bfloat16):
        grad = np.asarray(grad_fn(jnp.asarray(logits, dtype)), np.float32)
        assert grad.dtype == np.float32 and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_loss_runs_in_float32_for_bf16_logits():
    logits, mask = _random_batch(np.random.default_rng().integers(1 << 30))
    value = losses.get("bce_w_dice")(jnp.asarray(logits, jnp.bfloat16), mask, POS_WEIGHT)
    assert value.dtype == jnp.float32


def test_unknown_name_lists_the_losses():
    with pytest.raises(ConfigError, match="bce_w_dice.*dice_lovasz"):
        losses.get("diec")
