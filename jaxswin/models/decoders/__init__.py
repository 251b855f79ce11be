"""Segmentation decoders on a fused feature pyramid (Tables 7 and 9), by config name.

Every decoder is a Flax module ``Decoder(channels, dtype)`` called as ``decoder(pyramid, train)``
on the four NHWC maps (strides 4 to 32). It returns a tuple of stride-4 maps: the last is the
decoder output the segmentation head reads; any before it are side outputs (UNet++'s nodes
x^{0,1}, x^{0,2}) that deep supervision puts extra heads on.
"""

from __future__ import annotations

from jaxswin.models.decoders.deeplabv3plus import DeepLabV3Plus
from jaxswin.models.decoders.fpn import FPN
from jaxswin.models.decoders.hybrid import HybridDecoder
from jaxswin.models.decoders.segformer import SegFormerMLP
from jaxswin.models.decoders.unetpp import UNetPlusPlus
from jaxswin.models.decoders.upernet import UPerNet

DECODERS = {
    "unetpp": UNetPlusPlus,
    "fpn": FPN,
    "upernet": UPerNet,
    "segformer": SegFormerMLP,
    "deeplabv3plus": DeepLabV3Plus,
    "hybrid": HybridDecoder,
}

# Decoders with side outputs for deep supervision.
NESTED = ("unetpp", "hybrid")
