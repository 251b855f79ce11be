"""FPN decoder (Lin et al. 2017) with the semantic-segmentation branch of Panoptic FPN, as in
segmentation_models_pytorch's FPN: 1x1 laterals to C, a top-down pathway with upsample-and-add,
then per level one 3x3 Conv-BN-ReLU (C/2) and a 2x upsampling per octave above stride 4, summed.
(smp uses GroupNorm; BatchNorm here, like every other decoder of this package.)
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.models.layers import ConvBNReLU, resize_bilinear


class FPN(nn.Module):
    """Returns a one-element tuple: the merged stride-4 map with C/2 channels."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence, train: bool = False):
        sizes = [f.shape[1:3] for f in pyramid]
        laterals = [
            nn.Conv(self.channels, (1, 1), dtype=self.dtype, name=f"lateral_{i}")(f)
            for i, f in enumerate(pyramid)
        ]
        levels = [laterals[-1]]
        for i in range(len(pyramid) - 2, -1, -1):
            levels.insert(0, laterals[i] + resize_bilinear(levels[0], sizes[i]))
        merged = 0
        for i, x in enumerate(levels):
            for k in range(max(i, 1)):
                block = ConvBNReLU(self.channels // 2, 3, dtype=self.dtype, name=f"seg_{i}_{k}")
                x = block(x, train)
                x = resize_bilinear(x, sizes[max(i - k - 1, 0)])
            merged = merged + x
        return (merged,)
