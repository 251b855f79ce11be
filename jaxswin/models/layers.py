"""Building blocks shared by the fusion modules, decoders and heads.

Everything here follows PyTorch's conventions so that converted torch weights give the same
numbers: BatchNorm keeps torch's momentum (0.1 for the new batch = 0.9 in flax) and epsilon and
computes the batch variance in two passes as torch does (see swinv2.layer_norm for why),
bilinear resizing uses half-pixel centres without antialiasing (F.interpolate(...,
mode="bilinear", align_corners=False)) and adaptive average pooling uses torch's bins.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, use_fast_variance=False)


class ConvBNReLU(nn.Module):
    """Conv (no bias: BN follows) -> BatchNorm -> ReLU, 'same' padding, stride 1.

    `x` is a map or a sequence of maps that the conv reads as their channel concatenation:
    decoders pass the parts of a concatenation rather than the concatenation itself.
    """

    features: int
    kernel_size: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        parts = tuple(x) if isinstance(x, (list, tuple)) else (x,)
        x = PartsConv(self.features, self.kernel_size, self.dilation, self.dtype, name="conv")(parts)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class PartsConv(nn.Module):
    """nn.Conv without bias ('same' padding, stride 1; its kernel's name, shape and initialiser)
    of the channel concatenation of `parts`, computed as the sum of each part's convolution with
    its slice of the kernel. The concatenation is never written, and XLA's CPU convolutions run
    faster on the narrower inputs: UNet++'s 1024-channel node conv at batch 8, 32x32, takes 95 ms
    instead of 142 forward, and the paper model's train step ~2-3 % less (AMD EPYC Zen 5)."""

    features: int
    kernel_size: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, parts: tuple[jax.Array, ...]) -> jax.Array:
        widths = [part.shape[-1] for part in parts]
        shape = (self.kernel_size, self.kernel_size, sum(widths), self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        kernel = kernel.astype(self.dtype)
        starts = np.cumsum([0] + widths)
        convolutions = (
            jax.lax.conv_general_dilated(
                part.astype(self.dtype), kernel[:, :, start : start + width], (1, 1), "SAME",
                rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            for part, start, width in zip(parts, starts, widths)
        )
        return functools.reduce(jnp.add, convolutions)


RESIZE_SCOPE = "resize_bilinear"  # names the resizes' ops in profiles (experiments.op_profile)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes NHWC maps to `size` like torch's F.interpolate(bilinear, align_corners=False)."""
    if x.shape[1:3] == tuple(size):
        return x
    with jax.named_scope(RESIZE_SCOPE):
        return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False)


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    # torch's bins: output i averages inputs [floor(i*n/o), ceil((i+1)*n/o)).
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        stop = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch's adaptive_avg_pool2d to (size, size) on NHWC maps, also when size > the map."""
    rows = _adaptive_pool_matrix(x.shape[1], size)
    cols = _adaptive_pool_matrix(x.shape[2], size)
    return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x).astype(x.dtype)
