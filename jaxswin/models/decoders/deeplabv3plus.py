"""DeepLabV3+ decoder (Chen et al. 2018): ASPP on the coarsest map (1x1 branch, three atrous
3x3 branches, image pooling; 1x1 projection), upsampled to stride 4 and joined with a 48-channel
1x1 projection of the stride-4 features, then two 3x3 Conv-BN-ReLU.

The atrous rates (3, 6, 9) are the paper's (6, 12, 18) for output stride 16 halved, because ASPP
runs here on the stride-32 map (DeepLabV3 doubles them for output stride 8 by the same rule).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.layers import ConvBNReLU, resize_bilinear


class ASPP(nn.Module):
    channels: int
    rates: tuple[int, ...] = (3, 6, 9)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, dtype = self.channels, self.dtype
        branches = [ConvBNReLU(c, 1, dtype=dtype, name="conv_1x1")(x, train)]
        for rate in self.rates:
            branches.append(ConvBNReLU(c, 3, rate, dtype=dtype, name=f"atrous_{rate}")(x, train))
        pooled = ConvBNReLU(c, 1, dtype=dtype, name="image_pool")(
            jnp.mean(x, axis=(1, 2), keepdims=True), train
        )
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], c)))
        x = jnp.concatenate(branches, axis=-1)
        return ConvBNReLU(c, 1, dtype=dtype, name="proj")(x, train)


class DeepLabV3Plus(nn.Module):
    """Returns a one-element tuple: the decoded stride-4 map with C channels."""

    channels: int = 256
    low_level_channels: int = 48
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        c, dtype = self.channels, self.dtype
        context = ASPP(c, dtype=dtype, name="aspp")(pyramid[-1], train)
        low = ConvBNReLU(self.low_level_channels, 1, dtype=dtype, name="low_level")(
            pyramid[0], train
        )
        x = [resize_bilinear(context, low.shape[1:3]), low]  # the concatenation's parts
        x = ConvBNReLU(c, 3, dtype=dtype, name="conv1")(x, train)
        return (ConvBNReLU(c, 3, dtype=dtype, name="conv2")(x, train),)
