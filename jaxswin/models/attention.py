"""Channel attention blocks (Table 10): ECA, SE and CBAM on NHWC maps.

Each block follows timm's module of the same name (`timm.layers.EcaModule`, `SEModule`,
`CbamModule` with default arguments), so their weights map one to one. They are used at the
model input, after every encoder stage, in the attention-gated fusion and at the decoder output.

Every block is called as ``block(x, train=False)``: CBAM's spatial gate has a BatchNorm, so
callers pass `train` (and make "batch_stats" mutable while training). The gates are computed in
float32 and the output keeps the input's dtype.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from jaxswin.errors import ConfigError
from jaxswin.models.layers import BatchNorm

KINDS = ("none", "eca", "se", "cbam")


def reduced_channels(channels: int, ratio: float, divisor: int) -> int:
    """timm's make_divisible(channels * ratio, divisor, round_limit=0): the bottleneck width."""
    return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


class ECA(nn.Module):
    """Efficient Channel Attention: a 1D conv across the pooled channels, kernel size from C."""

    gamma: float = 2.0
    beta: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        t = int(abs(math.log2(channels) + self.beta) / self.gamma)
        kernel_size = max(t if t % 2 else t + 1, 3)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))[..., None]  # (B, C, 1)
        gate = nn.Conv(1, (kernel_size,), use_bias=False, name="conv")(pooled)
        return x * nn.sigmoid(gate[:, None, None, :, 0]).astype(x.dtype)


class SE(nn.Module):
    """Squeeze-and-Excitation: pooled channels -> C/16 (at least 8) -> C, sigmoid gate."""

    ratio: float = 1 / 16

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        hidden = nn.relu(nn.Dense(reduced_channels(channels, self.ratio, 8), name="fc1")(pooled))
        gate = nn.Dense(channels, name="fc2")(hidden)
        return x * nn.sigmoid(gate).astype(x.dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: a channel gate from average- and max-pooled
    descriptors through one shared bias-free MLP, then a spatial gate from a 7x7 conv + BN over
    the per-pixel channel mean and max."""

    ratio: float = 1 / 16
    spatial_kernel_size: int = 7

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        fc1 = nn.Dense(reduced_channels(channels, self.ratio, 1), use_bias=False, name="fc1")
        fc2 = nn.Dense(channels, use_bias=False, name="fc2")
        x32 = x.astype(jnp.float32)
        avg = fc2(nn.relu(fc1(jnp.mean(x32, axis=(1, 2), keepdims=True))))
        peak = fc2(nn.relu(fc1(jnp.max(x32, axis=(1, 2), keepdims=True))))
        x32 = x32 * nn.sigmoid(avg + peak)
        pooled = jnp.concatenate(
            [jnp.mean(x32, axis=-1, keepdims=True), jnp.max(x32, axis=-1, keepdims=True)], axis=-1
        )
        k = self.spatial_kernel_size
        gate = nn.Conv(1, (k, k), use_bias=False, name="spatial_conv")(pooled)
        gate = BatchNorm(use_running_average=not train, name="spatial_bn")(gate)
        return (x32 * nn.sigmoid(gate)).astype(x.dtype)


BLOCKS = {"eca": ECA, "se": SE, "cbam": CBAM}


def channel_attention(kind: str, name: str | None = None) -> nn.Module | None:
    """The attention block `kind` (none | eca | se | cbam); None for "none".

    Call it inside a parent module's setup or compact method, then as ``block(x, train)``.
    """
    if kind == "none":
        return None
    if kind not in BLOCKS:
        raise ConfigError(f"unknown channel attention '{kind}' (choose from {', '.join(KINDS)})")
    return BLOCKS[kind](name=name)
