"""Swin Transformer V2 backbone in Flax Linen, a numerical twin of timm's `SwinTransformerV2`.

The module computes what ``timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3),
img_size=img_size, in_chans=in_chans)`` computes, on NHWC input, and returns the four stage
outputs (strides 4/8/16/32, NHWC, without the classifier's final norm, as timm's feature net):

* patch embedding: a 4x4/4 conv, then LayerNorm;
* stages 2-4 start with PatchMerging v2 (2x2 neighbours concatenated, linear 4C -> 2C, then norm);
* blocks with res-post-norm (``x + norm(attn(x))``, ``x + norm(mlp(x))``), cosine attention scaled
  by a learned per-head logit scale clamped at log(1/0.01), q and v biases (k has none), and the
  log-spaced continuous position bias (2 -> 512 -> heads MLP, ``16 * sigmoid``);
* odd blocks shift their windows by half a window, with timm's -100 mask across the seams; a stage
  whose map is no larger than the window uses one window of the map's size and no shift.

Relative coordinate tables, relative position indices and shift masks depend only on the shapes,
so they are numpy constants, not variables.

Channel rule (`adapt_in_chans`, used when converting 3-channel RGB weights for `in_chans` != 3):

* 3: the RGB filters, unchanged;
* more than 3: channels 1-3 copy the RGB filters and every extra channel is their mean (the
  paper's channel-mean warm start, §3.2);
* 1 or 2: every channel is the sum of the RGB filters divided by the channel count, so a grey
  image fed to every channel gives the response the RGB model gives to that grey image (for one
  channel this is timm's rule, the RGB sum).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxswin import weights
from jaxswin.errors import UserError
from jaxswin.models.attention import channel_attention


@dataclass(frozen=True)
class SwinV2Config:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    # Window of pre-training per stage (0 = window_size); it sets the Log-CPB coordinate scale.
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)
    patch_size: int = 4
    mlp_ratio: float = 4.0


CONFIGS: dict[str, SwinV2Config] = {
    "swinv2_tiny_window8_256": SwinV2Config(96, (2, 2, 6, 2), (3, 6, 12, 24), 8),
    "swinv2_tiny_window16_256": SwinV2Config(96, (2, 2, 6, 2), (3, 6, 12, 24), 16),
    "swinv2_small_window8_256": SwinV2Config(96, (2, 2, 18, 2), (3, 6, 12, 24), 8),
    "swinv2_small_window16_256": SwinV2Config(96, (2, 2, 18, 2), (3, 6, 12, 24), 16),
    "swinv2_base_window8_256": SwinV2Config(128, (2, 2, 18, 2), (4, 8, 16, 32), 8),
    "swinv2_base_window16_256": SwinV2Config(128, (2, 2, 18, 2), (4, 8, 16, 32), 16),
    # Not timm models (no pretrained weights): the smallest net with every feature (shifts,
    # clipping), for tests and CPU runs, and the same width at SwinV2-T's depths.
    "swinv2_nano": SwinV2Config(32, (2, 2, 2, 2), (1, 2, 4, 8), 8),
    "swinv2_nano_deep": SwinV2Config(32, (2, 2, 6, 2), (1, 2, 4, 8), 8),
}
NOT_IN_TIMM = ("swinv2_nano", "swinv2_nano_deep")


def feature_channels(config: SwinV2Config) -> tuple[int, ...]:
    return tuple(config.embed_dim * 2**i for i in range(len(config.depths)))


def stage_resolutions(config: SwinV2Config, img_size: int) -> tuple[int, ...]:
    """Side of each stage's feature map: the patch grid, then halved (rounding up) per stage."""
    sides = [img_size // config.patch_size]
    for _ in config.depths[1:]:
        sides.append((sides[-1] + 1) // 2)
    return tuple(sides)


def window_and_shift(resolution: int, window: int) -> tuple[int, int]:
    """timm's rule: a map no larger than the window is one window of its own size, unshifted."""
    if resolution <= window:
        return resolution, 0
    return window, window // 2


# ----------------------------------------------------------------------------- numpy constants


@functools.lru_cache(maxsize=None)
def relative_coords_table(window: int, pretrained_window: int) -> np.ndarray:
    """Log-spaced relative coordinates ((2w-1)^2, 2), scaled to +-8 by the pre-training window."""
    coords = np.arange(-(window - 1), window, dtype=np.float32)
    table = np.stack(np.meshgrid(coords, coords, indexing="ij"), axis=-1)
    table /= max((pretrained_window or window) - 1, 1)  # a 1-wide window has only offset 0
    table *= 8
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8)
    return table.reshape(-1, 2).astype(np.float32)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
    """(N, N) index of each token pair's offset into the coordinate table, N = window^2."""
    axis = np.arange(window)
    coords = np.stack(np.meshgrid(axis, axis, indexing="ij")).reshape(2, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return offsets[0] * (2 * window - 1) + offsets[1]


def partition_windows(x, window: int):
    """(B, H, W, C) -> (B, number of windows, window^2, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def merge_windows(windows, window: int, height: int, width: int):
    b, _, _, c = windows.shape
    x = windows.reshape(b, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


@functools.lru_cache(maxsize=None)
def shift_mask(padded: int, window: int, shift: int) -> np.ndarray:
    """(windows, N, N) additive mask, -100 between tokens that the cyclic shift brought together."""
    regions = np.zeros((1, padded, padded, 1), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            regions[:, rows, cols, :] = 3 * i + j
    regions = partition_windows(regions, window)[0, :, :, 0]
    return np.where(regions[:, None, :] != regions[:, :, None], -100.0, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- modules

# timm's init: truncated normal linears, zero biases.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon):
    """torch's layer norm over the last axis in float32: two-pass variance (flax's one-pass
    E[x^2] - E[x]^2 loses small spreads on large means, e.g. DEM metres), (x - mean) * (scale /
    sigma) + bias as flax orders it."""
    return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _layer_norm_forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + epsilon)
    return (x32 - mean) * (inv_std * scale) + bias, (x, mean, inv_std, scale)


def _layer_norm_backward(epsilon, residuals, dy):
    # torch's formula from the input and the per-row statistics. Autodiff of the forward kept
    # scale / sigma broadcast to the map's full size as residuals, which XLA:CPU materialised:
    # the largest part of the layer norms' time in the train step.
    x, mean, inv_std, scale = residuals
    dy = dy.astype(jnp.float32)
    x_hat = (x.astype(jnp.float32) - mean) * inv_std
    rows = tuple(range(x.ndim - 1))
    d_scale, d_bias = jnp.sum(dy * x_hat, axis=rows), jnp.sum(dy, axis=rows)
    d_x_hat = dy * scale
    d_x = inv_std * (
        d_x_hat
        - jnp.mean(d_x_hat, axis=-1, keepdims=True)
        - x_hat * jnp.mean(d_x_hat * x_hat, axis=-1, keepdims=True)
    )
    return d_x.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
    """torch's LayerNorm (epsilon 1e-5) over the channels, computed in float32, output in `dtype`
    (the input's when None). Parameters "scale" and "bias" as flax's nn.LayerNorm names them."""

    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype or x.dtype)


def inverse_norm(x):
    """1 / max(|x|, 1e-12) over the last axis, torch's F.normalize divisor, written so a zero
    vector has a finite gradient."""
    return jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class WindowAttention(nn.Module):
    """Cosine attention inside windows with the Log-CPB bias; (B, nW, N, C) -> same."""

    dim: int
    num_heads: int
    window: int
    pretrained_window: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, windows, mask=None):
        b, num_windows, n, c = windows.shape
        heads = self.num_heads
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=dense_init)

        q_bias = self.param("q_bias", nn.initializers.zeros, (self.dim,))
        v_bias = self.param("v_bias", nn.initializers.zeros, (self.dim,))
        qkv_bias = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias])
        qkv = dense(3 * self.dim, use_bias=False, name="qkv")(windows) + qkv_bias.astype(self.dtype)
        # Split, not unpacked from a stacked axis: the gradient of a split is one concatenate,
        # of an unpacking three zero-padded full-size copies summed.
        q, k, v = (
            t.reshape(b, num_windows, n, heads, c // heads) for t in jnp.split(qkv, 3, axis=-1)
        )

        logit_scale = self.param(
            "logit_scale", nn.initializers.constant(np.log(10.0)), (heads, 1, 1)
        )
        scale = jnp.exp(jnp.minimum(logit_scale, np.log(1.0 / 0.01))).reshape(heads, 1)
        # Cosine similarities times the per-head scale, the scale folded into q's per-row
        # divisor: scaling the logits made XLA keep the scale broadcast to every logit for the
        # backward pass.
        logits = jnp.einsum(
            "bwqhd,bwkhd->bwhqk", q * (inverse_norm(q) * scale).astype(q.dtype), k * inverse_norm(k)
        ).astype(jnp.float32)

        # The bias MLP runs on the (2w-1)^2 offsets in float32, then is gathered per token pair.
        coords = relative_coords_table(self.window, self.pretrained_window)
        hidden = nn.relu(nn.Dense(512, kernel_init=dense_init, name="cpb_fc1")(coords))
        bias_table = nn.Dense(heads, use_bias=False, kernel_init=dense_init, name="cpb_fc2")(hidden)
        bias = 16 * nn.sigmoid(bias_table[relative_position_index(self.window)].transpose(2, 0, 1))
        if mask is not None:  # one (windows, heads, N, N) addend: the bias and the shift mask
            bias = bias + mask[:, None]
        logits = logits + bias

        attn = nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, num_windows, n, c)
        return dense(self.dim, name="proj")(out)


def gelu(x):
    """The exact GELU, x * Phi(x), written with erf as torch computes it: XLA:CPU evaluates erf
    several times faster than the erfc of flax's gelu(approximate=False); same values to float
    rounding."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class Mlp(nn.Module):
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=dense_init)
        y = gelu(dense(self.hidden, name="fc1")(x))
        return dense(x.shape[-1], name="fc2")(y)


class SwinV2Block(nn.Module):
    """(Shifted) window attention and MLP, each added back after its own LayerNorm."""

    num_heads: int
    window: int
    shift: int
    pretrained_window: int
    mlp_ratio: float
    drop_path: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, c = x.shape
        window, shift = self.window, self.shift
        # Residual post-norms start at zero (timm), so a fresh block is the identity.
        norm = functools.partial(
            LayerNorm, dtype=self.dtype, scale_init=nn.initializers.zeros
        )
        drop_path = functools.partial(
            nn.Dropout, self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train
        )

        # Maps are square. As in timm, the zero padding up to whole windows comes after the
        # shift and takes part in attention.
        padded = -(-h // window) * window
        y = jnp.roll(x, (-shift, -shift), axis=(1, 2)) if shift else x
        y = jnp.pad(y, ((0, 0), (0, padded - h), (0, padded - w), (0, 0)))
        mask = jnp.asarray(shift_mask(padded, window, shift)) if shift else None
        y = WindowAttention(
            c, self.num_heads, window, self.pretrained_window, self.dtype, name="attn"
        )(partition_windows(y, window), mask)
        y = merge_windows(y, window, padded, padded)[:, :h, :w]
        y = jnp.roll(y, (shift, shift), axis=(1, 2)) if shift else y
        x = x + drop_path(name="drop_path1")(norm(name="norm1")(y))

        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(x)
        return x + drop_path(name="drop_path2")(norm(name="norm2")(y))


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood concatenated (4C), reduced to `out_dim`, then normalised (v2)."""

    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h, w = x.shape[1:3]
        # timm's order: column offset major, row offset minor, channels last.
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, h // 2, w // 2, 4 * c)
        x = nn.Dense(
            self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init, name="reduction"
        )(x)
        return LayerNorm(dtype=self.dtype, name="norm")(x)


class PatchEmbed(nn.Module):
    embed_dim: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="proj")(x)
        return LayerNorm(dtype=self.dtype, name="norm")(x)


class SwinV2Stage(nn.Module):
    """Optional PatchMerging, then `depth` blocks, odd ones shifted (if the map allows it)."""

    out_dim: int
    depth: int
    num_heads: int
    resolution: int  # side of the stage's (output) map
    window_size: int
    pretrained_window: int
    downsample: bool
    drop_path: tuple[float, ...]
    mlp_ratio: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.downsample:
            x = PatchMerging(self.out_dim, self.dtype, name="downsample")(x)
        window, shift = window_and_shift(self.resolution, self.window_size)
        for i in range(self.depth):
            x = SwinV2Block(
                self.num_heads,
                window,
                shift if i % 2 else 0,
                self.pretrained_window,
                self.mlp_ratio,
                self.drop_path[i],
                self.dtype,
                name=f"blocks_{i}",
            )(x, train)
        return x


class SwinV2(nn.Module):
    """SwinV2 feature extractor: NHWC images -> four NHWC maps at strides 4, 8, 16, 32.

    `drop_path_rate` is the stochastic depth of the last block, rising linearly from 0 over the
    blocks (timm); it draws from the "dropout" RNG stream when ``train=True``. `stage_attention`
    gates each stage's output with a channel attention block (none | eca | se | cbam); the gated
    map feeds the next stage. Parameters are float32, `dtype` is the compute dtype.
    """

    config: SwinV2Config
    in_chans: int = 3
    img_size: int = 128
    drop_path_rate: float = 0.1
    stage_attention: str = "none"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False) -> list[jax.Array]:
        cfg = self.config
        expected = (self.img_size, self.img_size, self.in_chans)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"SwinV2 built for NHWC input (B, {self.img_size}, {self.img_size}, "
                f"{self.in_chans}), got {tuple(x.shape)}"
            )
        x = PatchEmbed(cfg.embed_dim, cfg.patch_size, self.dtype, name="patch_embed")(x)

        rates = np.linspace(0.0, self.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0,) + tuple(cfg.depths))
        features = []
        for i, (dim, resolution) in enumerate(
            zip(feature_channels(cfg), stage_resolutions(cfg, self.img_size))
        ):
            x = SwinV2Stage(
                dim,
                cfg.depths[i],
                cfg.num_heads[i],
                resolution,
                cfg.window_size,
                cfg.pretrained_window_sizes[i],
                downsample=i > 0,
                drop_path=tuple(rates[starts[i] : starts[i + 1]]),
                mlp_ratio=cfg.mlp_ratio,
                dtype=self.dtype,
                name=f"layers_{i}",
            )(x, train)
            gate = channel_attention(self.stage_attention, name=f"stage_attention_{i}")
            if gate is not None:
                x = gate(x, train)
            features.append(x)
        return features


# ----------------------------------------------------------------------------- timm weights


class ConversionError(UserError):
    """timm weights that do not fit the Flax SwinV2 (unknown, missing or misshapen tensors)."""


def adapt_in_chans(kernel_hwio: np.ndarray, in_chans: int) -> np.ndarray:
    """The patch-embedding kernel (kh, kw, in, out) for `in_chans` inputs, by the channel rule
    of the module docstring; a kernel that already has `in_chans` inputs is returned as is."""
    have = kernel_hwio.shape[2]
    if have == in_chans:
        return kernel_hwio
    if have != 3 or in_chans < 1:
        raise ConversionError(
            f"cannot adapt a {have}-channel patch embedding to {in_chans} channels "
            "(only 3-channel RGB weights are adapted)"
        )
    if in_chans < 3:
        grey = kernel_hwio.sum(axis=2, keepdims=True) / in_chans
        return np.repeat(grey, in_chans, axis=2)
    mean = kernel_hwio.mean(axis=2, keepdims=True)
    return np.concatenate([kernel_hwio] + [mean] * (in_chans - 3), axis=2)


def channel_rule(in_chans: int) -> str:
    """One line naming the rule `adapt_in_chans` applies to RGB weights (file metadata)."""
    if in_chans == 3:
        return "rgb: the RGB filters unchanged"
    if in_chans > 3:
        return f"channel-mean: channels 1-3 the RGB filters, 4-{in_chans} their mean (paper 3.2)"
    return f"grey-sum: every channel the sum of the RGB filters / {in_chans}"


# Non-persistent timm buffers that older checkpoints still carry: shapes, not weights.
TIMM_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")
# Parts of a full timm classifier that the feature net leaves unused: the classifier head, and the
# final norm, which timm applies only on the way to the head (feature maps are un-normed).
TIMM_CLASSIFIER = re.compile(r"^(head|norm)\.")


def flax_path(timm_name: str, ndim: int) -> tuple[str, ...]:
    """The Flax variable path of a timm parameter name (either timm layout: `layers.0.` of the
    classifier or `layers_0.` of the feature net), with torch's leaf names translated."""
    name = re.sub(r"^layers[._](\d+)", r"layers_\1", timm_name)
    name = re.sub(r"\bblocks\.(\d+)", r"blocks_\1", name)
    name = name.replace("cpb_mlp.0.", "cpb_fc1.").replace("cpb_mlp.2.", "cpb_fc2.")
    *path, leaf = name.split(".")
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return ("params", *path, leaf)


def torch_to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:  # linear (out, in) -> (in, out)
        return array.T
    return array


@functools.lru_cache(maxsize=None)
def variable_shapes(config: SwinV2Config, in_chans: int) -> dict[tuple[str, ...], tuple]:
    """Flat {path: shape} of the module's variables (traced abstractly; no weights are made)."""
    size = config.patch_size * 2 ** (len(config.depths) - 1)  # any size gives the same shapes
    module = SwinV2(config, in_chans=in_chans, img_size=size)
    shapes = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, in_chans), jnp.float32)
    )
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def timm_to_flax(
    state_dict: dict[str, np.ndarray], config: SwinV2Config, in_chans: int = 3
) -> dict:
    """Flax variables ({"params": ...}) from a timm SwinV2 state dict of numpy arrays.

    Skips timm's shape buffers (TIMM_BUFFERS) and the classifier's `head.*` and final `norm.*`.
    The patch embedding is adapted to `in_chans` by the channel rule (`adapt_in_chans`). Every
    tensor that maps nowhere, every variable left without a tensor and every shape mismatch is
    reported together in one ConversionError.
    """
    expected = variable_shapes(config, in_chans)
    converted, unknown, mismatched = {}, [], []
    for name, array in state_dict.items():
        if TIMM_CLASSIFIER.match(name) or any(buffer in name for buffer in TIMM_BUFFERS):
            continue
        array = np.asarray(array, dtype=np.float32)
        path = flax_path(name, array.ndim)
        array = torch_to_flax_layout(array)
        if path == ("params", "patch_embed", "proj", "kernel"):
            array = adapt_in_chans(array, in_chans)
        if path not in expected:
            unknown.append(name)
            continue
        if array.shape != expected[path]:
            mismatched.append(f"{name}: {array.shape} for {'/'.join(path)} {expected[path]}")
        converted[path] = array
    missing = ["/".join(path) for path in expected if path not in converted]
    problems = {"unknown": unknown, "missing": missing, "misshapen": mismatched}
    if any(problems.values()):
        raise ConversionError(
            f"timm weights do not fit the Flax SwinV2 ({weights.describe_misfit(problems)}); "
            "convert them with the --model they were trained as"
        )
    return weights.unflatten({"/".join(path): array for path, array in converted.items()})


def load(path: str | Path) -> tuple[SwinV2, dict]:
    """(module, variables) from a file written by jaxswin-convert timm: the module is built
    from the file's metadata (timm model name, in_chans, img_size)."""
    variables, metadata = weights.load(path)
    try:
        name, in_chans, img_size = metadata["model"], metadata["in_chans"], metadata["img_size"]
        config, in_chans, img_size = CONFIGS[name], int(in_chans), int(img_size)
    except (KeyError, ValueError):
        # Its metadata's keys, not values: a trained model's carry its whole config.
        trained = ("; a trained model (best/model.safetensors) is for jaxswin.predict"
                   if "config" in metadata else "")
        raise UserError(
            f"{path}: not a SwinV2 encoder file of jaxswin-convert timm (metadata keys "
            f"{sorted(metadata)}){trained}; convert the timm weights with jaxswin-convert timm"
        ) from None
    expected = variable_shapes(config, in_chans)
    found = {tuple(k.split("/")): v.shape for k, v in weights.flatten(variables).items()}
    if found != expected:

        def names(paths):
            return sorted("/".join(p) for p in paths)

        misshapen = [p for p in found.keys() & expected.keys() if found[p] != expected[p]]
        problems = {"unexpected": names(found.keys() - expected.keys()),
                    "missing": names(expected.keys() - found.keys()),
                    "misshapen": names(misshapen)}
        raise ConversionError(
            f"{path}: variables do not match {name} with {in_chans} channels "
            f"({weights.describe_misfit(problems)}); convert the timm weights again"
        )
    module = SwinV2(config, in_chans=in_chans, img_size=img_size)
    return module, jax.tree.map(jnp.asarray, variables)
