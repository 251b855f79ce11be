"""Hybrid decoder (paper §4.4.5): UNet++ for boundary detail and the SegFormer MLP for global
context run in parallel on the fused pyramid; their stride-4 outputs are concatenated and fused
by a 1x1 Conv-BN-ReLU with an SE gate before the head."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.attention import SE
from jaxswin.models.decoders.segformer import SegFormerMLP
from jaxswin.models.decoders.unetpp import UNetPlusPlus
from jaxswin.models.layers import ConvBNReLU


class HybridDecoder(nn.Module):
    """Returns UNet++'s side outputs followed by the fused stride-4 map with C channels."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        nested = UNetPlusPlus(self.channels, self.dtype, name="unetpp")(pyramid, train)
        (context,) = SegFormerMLP(self.channels, self.dtype, name="segformer")(pyramid, train)
        # Both branches end at the stride of pyramid[0], so they are aligned as they are.
        x = jnp.concatenate([nested[-1], context], axis=-1)
        x = ConvBNReLU(self.channels, 1, dtype=self.dtype, name="fuse")(x, train)
        return (*nested[:-1], SE(name="gate")(x, train))
