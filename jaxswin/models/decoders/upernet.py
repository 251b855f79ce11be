"""UPerNet decoder (Xiao et al. 2018) as in mmsegmentation's UPerHead: a pyramid pooling module
(scales 1, 2, 3, 6) on the coarsest map, an FPN over the other levels with 1x1 laterals and 3x3
output convs, and a 3x3 bottleneck over all levels concatenated at stride 4."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.layers import ConvBNReLU, adaptive_avg_pool, resize_bilinear


class PyramidPooling(nn.Module):
    channels: int
    scales: tuple[int, ...] = (1, 2, 3, 6)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        size = x.shape[1:3]
        branches = [x]
        for scale in self.scales:
            y = adaptive_avg_pool(x, scale)
            y = ConvBNReLU(self.channels, 1, dtype=self.dtype, name=f"pool_{scale}")(y, train)
            branches.append(resize_bilinear(y, size))
        # The concatenation of the branches, passed as its parts.
        return ConvBNReLU(self.channels, 3, dtype=self.dtype, name="bottleneck")(branches, train)


class UPerNet(nn.Module):
    """Returns a one-element tuple: the fused stride-4 map with C channels."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        c, dtype = self.channels, self.dtype
        laterals = [
            ConvBNReLU(c, 1, dtype=dtype, name=f"lateral_{i}")(f, train)
            for i, f in enumerate(pyramid[:-1])
        ]
        laterals.append(PyramidPooling(c, dtype=dtype, name="ppm")(pyramid[-1], train))
        for i in range(len(laterals) - 1, 0, -1):
            up = resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
            laterals[i - 1] = laterals[i - 1] + up
        outputs = [
            ConvBNReLU(c, 3, dtype=dtype, name=f"fpn_{i}")(x, train)
            for i, x in enumerate(laterals[:-1])
        ]
        outputs.append(laterals[-1])
        size = outputs[0].shape[1:3]
        x = [resize_bilinear(o, size) for o in outputs]  # the concatenation's parts
        return (ConvBNReLU(c, 3, dtype=dtype, name="fpn_bottleneck")(x, train),)
