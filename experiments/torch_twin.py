"""PyTorch twin of DualSwinFusionSeg's main configuration, on timm SwinV2 encoders.

Two timm feature nets (RGB 3 channels, AUX 4), per-scale concat + 1x1 conv fusion, the UNet++
decoder with its refine conv, dropout and 1x1 head, bilinear upsampling to the input size:
layer for layer what ``jaxswin.models.build(model_cfg)`` computes for arch "dual", fusion "concat",
decoder "unetpp" without attention or deep supervision. Module names mirror the Flax variable
paths (``decoder.node_0_1.conv1.bn.weight`` <-> ``decoder/node_0_1/conv1/bn/scale``), so
``jaxswin-convert twin`` (convert/twin_to_flax.py) turns a state dict of this model into jaxswin variables.

Inputs and logits are NCHW here (torch's layout); the Flax model is NHWC.
"""

from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from jaxswin.config import ModelConfig
from jaxswin.convert.from_twin import check_config
from jaxswin.data import bands
from jaxswin.models import swinv2

def swinv2_features(
    encoder: str, in_chans: int, img_size: int, drop_path_rate: float = 0.0
) -> nn.Module:
    """timm's SwinV2 feature net (NHWC maps at strides 4-32) with jaxswin's config `encoder`;
    names that are not timm models (swinv2_nano) are built from their architecture numbers."""
    cfg = swinv2.CONFIGS[encoder]
    return timm.create_model(
        encoder if timm.is_model(encoder) else "swinv2_tiny_window8_256",
        pretrained=False,
        features_only=True,
        out_indices=(0, 1, 2, 3),
        img_size=img_size,
        in_chans=in_chans,
        embed_dim=cfg.embed_dim,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        drop_path_rate=drop_path_rate,
    )


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class NestedNode(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, channels, 3)
        self.conv2 = ConvBNReLU(channels, channels, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class UNetPlusPlus(nn.Module):
    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.depth = len(in_channels)
        for i, c in enumerate(in_channels):
            self.add_module(f"proj_{i}", ConvBNReLU(c, channels, 1))
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                self.add_module(f"node_{i}_{j}", NestedNode((j + 1) * channels, channels))
        self.refine = ConvBNReLU(channels, channels, 3)

    def forward(self, pyramid):
        nodes = {(i, 0): getattr(self, f"proj_{i}")(f) for i, f in enumerate(pyramid)}
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                up = resize_bilinear(nodes[i + 1, j - 1], nodes[i, 0].shape[-2:])
                x = torch.cat([nodes[i, k] for k in range(j)] + [up], dim=1)
                nodes[i, j] = getattr(self, f"node_{i}_{j}")(x)
        return self.refine(nodes[0, self.depth - 1])


class ScaleFusion(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, rgb, aux):
        return self.proj(torch.cat([rgb, aux], dim=1))


class Head(nn.Module):
    def __init__(self, channels: int, dropout: float, dropout_kind: str = "element"):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout_kind == "channel" else nn.Dropout(dropout)
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.conv(self.dropout(x))


class DualSwinFusionSeg(nn.Module):
    """rgb (B,3,H,W), aux (B,4,H,W) (thermal, slope, DEM, gray) -> logits (B,1,H,W)."""

    def __init__(
        self,
        encoder: str = "swinv2_small_window8_256",
        img_size: int = 128,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        drop_path_rate: float = 0.1,
        head_dropout: str = "element",
        aux_order: Sequence[str] = bands.AUX,
    ):
        super().__init__()
        # The AUX channels (given in jaxswin's canonical order) in the order the encoder reads.
        self.aux_order = [bands.AUX.index(name) for name in aux_order]
        self.rgb_encoder = swinv2_features(encoder, 3, img_size, drop_path_rate)
        self.aux_encoder = swinv2_features(encoder, 4, img_size, drop_path_rate)
        channels = self.rgb_encoder.feature_info.channels()
        self.fusion = nn.Module()
        for i, c in enumerate(channels):
            self.fusion.add_module(f"scale_{i}", ScaleFusion(c))
        self.decoder = UNetPlusPlus(channels, decoder_channels)
        self.head = Head(decoder_channels, dropout, head_dropout)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> "DualSwinFusionSeg":
        check_config(model_cfg)
        return cls(
            model_cfg.encoder,
            model_cfg.img_size,
            model_cfg.decoder_channels,
            model_cfg.dropout,
            model_cfg.drop_path_rate,
            model_cfg.head_dropout,
            model_cfg.aux_order,
        )

    def forward(self, rgb, aux):
        # timm's SwinV2 feature net returns NHWC maps.
        rgb_pyramid = [f.permute(0, 3, 1, 2) for f in self.rgb_encoder(rgb)]
        aux_pyramid = [f.permute(0, 3, 1, 2) for f in self.aux_encoder(aux[:, self.aux_order])]
        fused = [
            getattr(self.fusion, f"scale_{i}")(r, a)
            for i, (r, a) in enumerate(zip(rgb_pyramid, aux_pyramid))
        ]
        return resize_bilinear(self.head(self.decoder(fused)), rgb.shape[-2:])
