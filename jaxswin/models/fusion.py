"""Cross-modal fusion of the two encoders' pyramids, one module per scale (paper §3.3, Table 8).

concat (the paper): F = Conv1x1([F_rgb || F_aux]) back to C_l channels, with bias.
weighted_sum: F = w * F_rgb + (1 - w) * F_aux, w = sigmoid(a) with one learned a per scale.
weighted_sum_fixed: the same with w fixed (model.fusion_weight, 1/2 by default): the "fixed
  scalar weighting" the paper's §4.4.3 describes.
eca | se | cbam (attention-gated, Table 10): the channel gate on the 2C_l concat, then the 1x1 conv.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.attention import channel_attention

KINDS = ("concat", "weighted_sum", "weighted_sum_fixed", "eca", "se", "cbam")


class ScaleFusion(nn.Module):
    kind: str = "concat"
    dtype: Any = jnp.float32
    weight: float = 0.5  # the fixed w of weighted_sum_fixed

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        if self.kind.startswith("weighted_sum"):
            if self.kind == "weighted_sum":
                # a = 0 starts from the plain average of the two streams.
                weight = nn.sigmoid(self.param("weight_logit", nn.initializers.zeros, ()))
            else:
                weight = jnp.asarray(self.weight)
            weight = weight.astype(self.dtype)
            return weight * rgb.astype(self.dtype) + (1 - weight) * aux.astype(self.dtype)
        x = jnp.concatenate([rgb, aux], axis=-1)
        if self.kind != "concat":
            x = channel_attention(self.kind, name="gate")(x, train)
        return nn.Conv(rgb.shape[-1], (1, 1), dtype=self.dtype, name="proj")(x)


class CrossModalFusion(nn.Module):
    """Fuses two feature pyramids scale by scale into one pyramid with the same channels."""

    kind: str = "concat"
    dtype: Any = jnp.float32
    weight: float = 0.5

    @nn.compact
    def __call__(self, rgb_pyramid: Sequence, aux_pyramid: Sequence, train: bool = False):
        return [
            ScaleFusion(self.kind, self.dtype, self.weight, name=f"scale_{level}")(rgb, aux, train)
            for level, (rgb, aux) in enumerate(zip(rgb_pyramid, aux_pyramid, strict=True))
        ]
