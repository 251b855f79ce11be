"""SegFormer all-MLP decoder (Xie et al. 2021): a linear layer per level to C, bilinear
upsampling to stride 4, concatenation (coarsest first, as in the reference code) and a 1x1
Conv-BN-ReLU fusing them."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.layers import ConvBNReLU, resize_bilinear


class SegFormerMLP(nn.Module):
    """Returns a one-element tuple: the fused stride-4 map with C channels."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        size = pyramid[0].shape[1:3]
        levels = [
            resize_bilinear(nn.Dense(self.channels, dtype=self.dtype, name=f"linear_{i}")(f), size)
            for i, f in enumerate(pyramid)
        ]
        x = jnp.concatenate(levels[::-1], axis=-1)
        return (ConvBNReLU(self.channels, 1, dtype=self.dtype, name="fuse")(x, train),)
