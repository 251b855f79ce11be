"""DualSwinFusionSeg (paper §3, Fig. 1) and the late-fusion and single-encoder variants (§4.4).

dual (the paper): RGB -> SwinV2, AUX -> SwinV2, fused scale by scale, one decoder and head.
late: a full encoder-decoder-head per modality, logits blended by sigma(alpha) (§4.4.5).
single: one SwinV2 on a chosen subset of the seven channels (Tables 3 and 5).

All three take ``(rgb (B,H,W,3), aux (B,H,W,4), train)`` and return float32 logits (B,H,W,1);
with deep supervision in training, (B,H,W,K), the side heads first and the final head last.
Top-level submodules are named by what they are (rgb_encoder, aux_encoder, fusion, decoder,
head, ...) so parameter trees, checkpoints and the summary read the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxswin.config import ModelConfig
from jaxswin.data import bands
from jaxswin.errors import ConfigError
from jaxswin.models import attention, fusion, swinv2
from jaxswin.models.decoders import DECODERS, NESTED
from jaxswin.models.layers import resize_bilinear

ARCHS = ("dual", "late", "single")
HEAD_DROPOUTS = ("element", "channel")
STREAMS = bands.RGB + bands.AUX  # channel order of concatenate([rgb, aux])


class SegmentationHead(nn.Module):
    """Decoder-output attention (DO), dropout, a 1x1 conv to one logit, bilinear upsampling to
    the input size. With deep supervision, 1x1 side heads on the decoder's side outputs add one
    channel each in training (they always exist, so variables do not depend on the mode)."""

    attention: str = "none"
    dropout: float = 0.1
    deep_supervision: bool = False
    dtype: Any = jnp.float32
    dropout_kind: str = "element"  # element: single values | channel: whole maps (Dropout2d)

    @nn.compact
    def __call__(self, features: Sequence, size: tuple[int, int], train: bool = False):
        x = features[-1]
        gate = attention.channel_attention(self.attention, name="attention")
        if gate is not None:
            x = gate(x, train)
        # Dropout2d zeroes a channel over all pixels: one draw per (tile, channel).
        whole_maps = (1, 2) if self.dropout_kind == "channel" else ()
        x = nn.Dropout(self.dropout, broadcast_dims=whole_maps, deterministic=not train)(x)
        logits = [nn.Conv(1, (1, 1), dtype=self.dtype, name="conv")(x)]
        if self.deep_supervision:
            side = [
                nn.Conv(1, (1, 1), dtype=self.dtype, name=f"side_{k}")(f)
                for k, f in enumerate(features[:-1])
            ]
            if train:
                logits = side + logits
        logits = jnp.concatenate(logits, axis=-1).astype(jnp.float32)
        return resize_bilinear(logits, size)


def encode(cfg: ModelConfig, x, prefix: str, train: bool, dtype):
    """Input attention (IA) and a SwinV2 encoder, as submodules `{prefix}input_attention` and
    `{prefix}encoder` of the calling module."""
    gate = attention.channel_attention(cfg.input_attention, name=f"{prefix}input_attention")
    if gate is not None:
        x = gate(x, train)
    encoder = swinv2.SwinV2(
        swinv2.CONFIGS[cfg.encoder],
        in_chans=x.shape[-1],
        img_size=cfg.img_size,
        drop_path_rate=cfg.drop_path_rate,
        stage_attention=cfg.encoder_attention,
        dtype=dtype,
        name=f"{prefix}encoder",
    )
    return encoder(x, train)


def order_aux(cfg: ModelConfig, aux):
    """The AUX stream (canonical thermal, slope, DEM, gray) in `cfg.aux_order`, the order its
    encoder reads: a pretrained warm start gives the first three the red, green and blue filters
    and the fourth their mean (models.load_pretrained)."""
    if tuple(cfg.aux_order) == bands.AUX:
        return aux
    return jnp.take(aux, np.asarray([bands.AUX.index(c) for c in cfg.aux_order]), axis=-1)


def decode(cfg: ModelConfig, pyramid, size, prefix: str, train: bool, dtype):
    """The configured decoder and the head, as `{prefix}decoder` and `{prefix}head`."""
    decoder = DECODERS[cfg.decoder](cfg.decoder_channels, dtype=dtype, name=f"{prefix}decoder")
    head = SegmentationHead(
        cfg.decoder_attention, cfg.dropout, cfg.deep_supervision, dtype, cfg.head_dropout,
        name=f"{prefix}head",
    )
    return head(decoder(pyramid, train), size, train)


class DualSwinFusionSeg(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        cfg = self.config
        rgb_pyramid = encode(cfg, rgb, "rgb_", train, self.dtype)
        aux_pyramid = encode(cfg, order_aux(cfg, aux), "aux_", train, self.dtype)
        fused = fusion.CrossModalFusion(cfg.fusion, self.dtype, cfg.fusion_weight, name="fusion")(
            rgb_pyramid, aux_pyramid, train
        )
        return decode(cfg, fused, rgb.shape[1:3], "", train, self.dtype)


class LateFusionSeg(nn.Module):
    """One encoder-decoder-head per modality; y = s * L_rgb + (1 - s) * L_aux, s = sigma(alpha)."""

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        cfg = self.config
        size = rgb.shape[1:3]
        rgb_pyramid = encode(cfg, rgb, "rgb_", train, self.dtype)
        rgb_logits = decode(cfg, rgb_pyramid, size, "rgb_", train, self.dtype)
        aux_pyramid = encode(cfg, order_aux(cfg, aux), "aux_", train, self.dtype)
        aux_logits = decode(cfg, aux_pyramid, size, "aux_", train, self.dtype)
        weight = nn.sigmoid(self.param("blend_logit", nn.initializers.zeros, ()))  # starts at 1/2
        return weight * rgb_logits + (1 - weight) * aux_logits


def band_indices(cfg: ModelConfig) -> tuple[int, ...]:
    """Where the single encoder's `bands` sit in concatenate([rgb, aux]); all seven if empty."""
    return tuple(STREAMS.index(band) for band in (cfg.bands or bands.CHANNELS))


class SingleSwinSeg(nn.Module):
    """One SwinV2 on `config.bands` picked from the seven channels, then decoder and head."""

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        cfg = self.config
        x = jnp.take(jnp.concatenate([rgb, aux], axis=-1), np.asarray(band_indices(cfg)), axis=-1)
        pyramid = encode(cfg, x, "", train, self.dtype)
        return decode(cfg, pyramid, rgb.shape[1:3], "", train, self.dtype)


MODELS = {"dual": DualSwinFusionSeg, "late": LateFusionSeg, "single": SingleSwinSeg}


def validate(cfg: ModelConfig) -> None:
    """Raises ConfigError naming the first `model.*` field that no variant can build."""
    choices = {
        "arch": ARCHS,
        "encoder": tuple(swinv2.CONFIGS),
        "fusion": fusion.KINDS,
        "decoder": tuple(DECODERS),
        "input_attention": attention.KINDS,
        "encoder_attention": attention.KINDS,
        "decoder_attention": attention.KINDS,
    }
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ConfigError(f"model.{name} = {value!r} is not one of: {', '.join(allowed)}")
    unknown = [band for band in cfg.bands if band not in bands.CHANNELS]
    if unknown:
        raise ConfigError(
            f"model.bands: unknown channel(s) {', '.join(unknown)} "
            f"(channels: {', '.join(bands.CHANNELS)})"
        )
    if sorted(cfg.aux_order) != sorted(bands.AUX):
        raise ConfigError(
            f"model.aux_order must list {', '.join(bands.AUX)} once each, got {list(cfg.aux_order)}"
        )
    if cfg.head_dropout not in HEAD_DROPOUTS:
        raise ConfigError(
            f"model.head_dropout = {cfg.head_dropout!r} is not one of: {', '.join(HEAD_DROPOUTS)}"
        )
    if not 0.0 <= cfg.fusion_weight <= 1.0:
        raise ConfigError(f"model.fusion_weight = {cfg.fusion_weight} must be in [0, 1]")
    if len(set(cfg.bands)) != len(cfg.bands):
        raise ConfigError(f"model.bands lists a channel twice: {list(cfg.bands)}")
    if cfg.bands and cfg.arch != "single":
        raise ConfigError(
            f"model.bands picks the channels of arch 'single'; arch {cfg.arch!r} always reads "
            "RGB and AUX (leave bands empty)"
        )
    if cfg.deep_supervision and cfg.decoder not in NESTED:
        raise ConfigError(
            f"model.deep_supervision needs a decoder with nested outputs ({', '.join(NESTED)}), "
            f"not {cfg.decoder!r}"
        )
    patch = swinv2.CONFIGS[cfg.encoder].patch_size
    if cfg.img_size <= 0 or cfg.img_size % patch:
        raise ConfigError(
            f"model.img_size = {cfg.img_size} must be a positive multiple of the patch size {patch}"
        )
    if cfg.decoder_channels < 2:
        raise ConfigError(f"model.decoder_channels = {cfg.decoder_channels} must be at least 2")
    for name in ("dropout", "drop_path_rate"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"model.{name} = {getattr(cfg, name)} must be in [0, 1)")
