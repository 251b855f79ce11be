"""UNet++ decoder (Zhou et al. 2018) as configured in the paper (§3.4).

x^{i,0} = Proj_i(F^{i+1}) (1x1 Conv-BN-ReLU to C), and for j >= 1
x^{i,j} = H_{i,j}(Cat(x^{i,0}, ..., x^{i,j-1}, Up(x^{i+1,j-1}))), H = two 3x3 Conv-BN-ReLU (the first
reads the concatenation from its parts: layers.PartsConv),
Up = bilinear. The output node x^{0,3} is refined by a 3x3 Conv-BN-ReLU.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.layers import ConvBNReLU, resize_bilinear


class NestedNode(nn.Module):
    """H_{i,j}: two 3x3 Conv-BN-ReLU."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNReLU(self.features, 3, dtype=self.dtype, name="conv1")(x, train)
        return ConvBNReLU(self.features, 3, dtype=self.dtype, name="conv2")(x, train)


class UNetPlusPlus(nn.Module):
    """Returns (x^{0,1}, ..., x^{0,D-2}, refined x^{0,D-1}) at stride 4, D = pyramid depth;
    the nodes before the last are the deep-supervision side outputs."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        depth = len(pyramid)
        nodes = {
            (i, 0): ConvBNReLU(self.channels, 1, dtype=self.dtype, name=f"proj_{i}")(f, train)
            for i, f in enumerate(pyramid)
        }
        for j in range(1, depth):
            for i in range(depth - j):
                up = resize_bilinear(nodes[i + 1, j - 1], nodes[i, 0].shape[1:3])
                x = [nodes[i, k] for k in range(j)] + [up]  # the concatenation's parts
                nodes[i, j] = NestedNode(self.channels, self.dtype, name=f"node_{i}_{j}")(x, train)
        refined = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="refine")(
            nodes[0, depth - 1], train
        )
        return (*(nodes[0, j] for j in range(1, depth - 1)), refined)
