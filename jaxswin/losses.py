"""Segmentation losses of the paper's ablation (§3.5, Table 6), by name.

Every loss has the signature ``fn(logits, mask, pos_weight) -> scalar``: logits (B, H, W, K) of
any float dtype (the maths runs in float32), mask (B, H, W, 1) in {0, 1}, ``pos_weight`` the
w+ = N_neg / N_pos of the training fold (used by the class-weighted BCE only). With deep
supervision K > 1 and the loss is the mean of the loss of each head against the same mask.

Conventions (the paper names the losses but not all of their constants):
- Overlap losses (Dice, soft IoU, Tversky, Boundary Dice) sum over the whole batch, every
  pixel of every tile (eq. 5), not per tile. They are optax's generalised Dice with the
  smoothing ε = 1e-7 in numerator and denominator: eq. 5 up to O(ε), except that a perfect
  prediction of an all-background batch scores 0 rather than 1.
- ``train.dice = "per_tile"`` swaps the Dice term (alone or in a composite) for the authors'
  code: per tile 2·Σ(p·y) / (Σp + Σy + ε) over its pixels, ε in the denominator only, and
  loss 1 − the mean over the batch (an all-background tile then costs 1 whatever it predicts).
- A composite ("bce_w_dice", "dice_lovasz", ...) is the mean of its terms, as eq. 4's ½ + ½.
- Focal: Lin et al.'s γ = 2, α = 0.25 (α weights the positives), mean over pixels.
- Tversky: α = 0.3 on false positives, β = 0.7 on false negatives (Salehi et al.).
- Boundary Dice: Dice between the boundaries of prediction and mask, the boundary being the
  morphological gradient (3×3 max-pool minus 3×3 min-pool; soft for the probabilities). The
  tile edge is not a boundary: pooling pads with ∓inf.
- Lovász hinge (Berman et al.): over the batch flattened as one image, on the raw logits.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxswin.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array, jax.Array | float], jax.Array]

EPS = 1e-7
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7
_BATCH_AXES = (0, 1, 2)  # sum over batch and pixels, one value per channel


def bce(logits, mask, pos_weight):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))


def bce_weighted(logits, mask, pos_weight):
    """BCE with the positive pixels' term scaled by w+ (torch's BCEWithLogits pos_weight)."""
    weight = jnp.where(mask > 0.5, pos_weight, 1.0)
    return jnp.mean(weight * optax.sigmoid_binary_cross_entropy(logits, mask))


def focal(logits, mask, pos_weight):
    return jnp.mean(
        optax.sigmoid_focal_loss(logits, mask, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)
    )


def _tversky_index_loss(logits, mask, alpha, beta):
    # 1 - (I + ε) / (I + α FP + β FN + ε); Dice at α = β = ½, Jaccard at α = β = 1.
    return optax.losses.dice_loss(
        logits, mask, smooth=EPS, alpha=alpha, beta=beta, axis=_BATCH_AXES
    )


def dice(logits, mask, pos_weight):
    return _tversky_index_loss(logits, mask, 0.5, 0.5)


def dice_per_tile(logits, mask, pos_weight):
    prob = jax.nn.sigmoid(logits)
    overlap = 2.0 * jnp.sum(prob * mask, axis=(1, 2))
    total = jnp.sum(prob, axis=(1, 2)) + jnp.sum(mask, axis=(1, 2)) + EPS
    return 1.0 - jnp.mean(overlap / total)


def soft_iou(logits, mask, pos_weight):
    return _tversky_index_loss(logits, mask, 1.0, 1.0)


def tversky(logits, mask, pos_weight):
    return _tversky_index_loss(logits, mask, TVERSKY_ALPHA, TVERSKY_BETA)


def boundary(x):
    """Morphological gradient over 3×3 (dilation minus erosion) of a (B, H, W, C) map in [0, 1]."""
    dilation = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
    erosion = -nn.max_pool(-x, (3, 3), strides=(1, 1), padding="SAME")
    return dilation - erosion


def boundary_dice(logits, mask, pos_weight):
    pred_edge, mask_edge = boundary(jax.nn.sigmoid(logits)), boundary(mask)
    intersection = jnp.sum(pred_edge * mask_edge)
    total = jnp.sum(pred_edge) + jnp.sum(mask_edge)
    return 1.0 - (2.0 * intersection + EPS) / (total + EPS)


def lovasz_hinge(logits, mask, pos_weight):
    """Berman et al.'s Lovász extension of the Jaccard loss applied to hinge errors."""
    logits, labels = logits.reshape(-1), mask.reshape(-1)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    # Descending errors; the labels ride along in the same order.
    neg_sorted, labels_sorted = jax.lax.sort((-errors, labels), num_keys=1)
    positives = jnp.sum(labels_sorted)
    intersection = positives - jnp.cumsum(labels_sorted)
    union = positives + jnp.cumsum(1.0 - labels_sorted)
    jaccard = 1.0 - intersection / union
    gradient = jnp.diff(jaccard, prepend=0.0)
    return jnp.dot(jax.nn.relu(-neg_sorted), gradient)


def mean_of(*terms: LossFn) -> LossFn:
    def loss(logits, mask, pos_weight):
        return sum(term(logits, mask, pos_weight) for term in terms) / len(terms)

    return loss


def multi_head(fn: LossFn) -> LossFn:
    """Runs `fn` in float32 on each of the K logit channels against the one mask; the mean."""

    def loss(logits, mask, pos_weight):
        logits = jnp.asarray(logits, jnp.float32)
        mask = jnp.asarray(mask, jnp.float32)
        pos_weight = jnp.asarray(pos_weight, jnp.float32)
        heads = [fn(logits[..., k : k + 1], mask, pos_weight) for k in range(logits.shape[-1])]
        return sum(heads) / len(heads)

    return loss


def _losses(dice: LossFn) -> dict[str, LossFn]:
    """The named losses, with `dice` as their Dice term."""
    return {
        "bce": bce,
        "dice": dice,
        "bce_dice": mean_of(bce, dice),
        "bce_w_dice": mean_of(bce_weighted, dice),
        "focal": focal,
        "focal_dice": mean_of(focal, dice),
        "soft_iou": soft_iou,
        "bce_soft_iou": mean_of(bce, soft_iou),
        "tversky": tversky,
        "dice_boundary_dice": mean_of(dice, boundary_dice),
        "dice_lovasz": mean_of(dice, lovasz_hinge),
        "bce_w_dice_lovasz": mean_of(bce_weighted, dice, lovasz_hinge),
    }


_LOSSES = {"batch": _losses(dice), "per_tile": _losses(dice_per_tile)}  # by train.dice
NAMES = tuple(_LOSSES["batch"])
DICE_MODES = tuple(_LOSSES)


def get(name: str, dice: str = "batch") -> LossFn:
    """The loss called `name` (see NAMES) with its Dice term over the batch or per tile
    (`dice`, see DICE_MODES): fn(logits (B,H,W,K), mask (B,H,W,1), pos_weight)."""
    if dice not in _LOSSES:
        raise ConfigError(f"train.dice: unknown mode '{dice}' (modes: {', '.join(DICE_MODES)})")
    if name not in _LOSSES[dice]:
        raise ConfigError(f"train.loss: unknown loss '{name}' (losses: {', '.join(NAMES)})")
    return multi_head(_LOSSES[dice][name])
