"""Converts timm SwinV2 weights to a Flax variables file for jaxswin.models.swinv2.

    jaxswin-convert timm --model swinv2_small_window8_256 [--checkpoint FILE] [--in-chans N]
        [--img-size 128] --out OUT.safetensors [--overwrite]

Without --checkpoint the weights are timm's pretrained ones (Hugging Face hub or its local
cache). With it, FILE is a state dict saved as .safetensors, .pth/.pt or .bin: a timm model's
(classifier or feature net), one wrapped as {"model": ...} or {"state_dict": ...}, or an original
Microsoft checkpoint (stage layout remapped by timm's own checkpoint filter). Dropped on the way:
the classifier head (`head.*`), the final norm (`norm.*`, which timm applies only before the head,
not to feature maps) and shape buffers (relative position index/table, attention masks, k bias).

The output's metadata records the timm model name, in_chans, img_size, the source and the channel
rule used for the patch embedding (see --in-chans).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxswin import resilience, weights
from jaxswin.errors import UserError
from jaxswin.models import swinv2

CHANNEL_RULE_HELP = (
    "input channels of the patch embedding (default 3). From RGB weights: 3 keeps them; more "
    "than 3 copies the RGB filters to channels 1-3 and sets every extra channel to their mean "
    "(the paper's channel-mean warm start, e.g. 4 for the AUX encoder, 7 for all bands); 1 or 2 "
    "sets every channel to the RGB sum divided by the channel count (a grey image on every "
    "channel then gives the RGB model's response). A checkpoint that already has N channels is "
    "kept as is."
)
DESCRIPTION = "Convert timm SwinV2 weights to a jaxswin Flax .safetensors file."


def timm_models() -> list[str]:
    return [name for name in swinv2.CONFIGS if name not in swinv2.NOT_IN_TIMM]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"timm model name: {', '.join(timm_models())}")
    parser.add_argument("--checkpoint", type=Path,
                        help="state dict file (.safetensors, .pth, .pt or .bin); default: timm's "
                             "pretrained weights")
    parser.add_argument("--in-chans", type=int, default=3, help=CHANNEL_RULE_HELP)
    parser.add_argument("--img-size", type=int, default=128,
                        help="input size the backbone is built for (default 128)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def read_checkpoint(path: Path) -> dict:
    """The state dict of torch tensors in a checkpoint file (.safetensors, .pth, .pt, .bin),
    unwrapped from {"model": ...} or {"state_dict": ...}; both converters read with it."""
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file")
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise UserError(
            f"--checkpoint {path}: unknown format (use .safetensors, .pth, .pt or .bin)"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails on junk in many types
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise UserError(
            f"--checkpoint {path}: not a readable checkpoint ({type(err).__name__}: "
            f"{first_line}); pass a state dict saved by torch.save or safetensors"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--checkpoint {path}: not a state dict of tensors")
    return state


def timm_state_dict(name: str, checkpoint: Path | None, img_size: int) -> dict:
    """The timm state dict (torch tensors) in timm's current layout."""
    import timm
    from timm.models.swin_transformer_v2 import checkpoint_filter_fn

    if checkpoint is None:
        try:
            model = timm.create_model(name, pretrained=True, img_size=img_size)
        except Exception as err:  # hub and cache failures come in many types
            raise UserError(
                f"cannot get timm's pretrained weights for {name} ({type(err).__name__}: {err}); "
                "without network access pass the weights file with --checkpoint FILE"
            ) from None
        return model.state_dict()
    state = read_checkpoint(checkpoint)
    # timm's filter remaps original Microsoft checkpoints (downsample at the end of a stage); it
    # reads the patch embedding's shape from a model of the same architecture (no weights needed).
    model = timm.create_model(name, pretrained=False, img_size=img_size, device="meta")
    return checkpoint_filter_fn(state, model)


def check_arguments(args: argparse.Namespace) -> swinv2.SwinV2Config:
    """The SwinV2 config of --model; a UserError for any option that cannot work."""
    if args.model not in timm_models():
        raise UserError(f"--model {args.model}: not a supported timm SwinV2 (choose from "
                        f"{', '.join(timm_models())})")
    if args.in_chans < 1:
        raise UserError(f"--in-chans {args.in_chans}: must be at least 1")
    config = swinv2.CONFIGS[args.model]
    if args.img_size <= 0 or args.img_size % config.patch_size:
        raise UserError(
            f"--img-size {args.img_size}: must be a positive multiple of the patch size "
            f"{config.patch_size}"
        )
    return config


def run(args: argparse.Namespace) -> None:
    config = check_arguments(args)
    weights.check_target(args.out, "--out", args.overwrite)
    state = timm_state_dict(args.model, args.checkpoint, args.img_size)
    arrays = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
    try:
        variables = swinv2.timm_to_flax(arrays, config, args.in_chans)
    except swinv2.ConversionError as err:
        raise UserError(f"{args.checkpoint or 'timm pretrained'}: {err}") from None
    metadata = {
        "model": args.model,
        "in_chans": args.in_chans,
        "img_size": args.img_size,
        "source": str(args.checkpoint) if args.checkpoint else "timm pretrained",
        "channel_rule": swinv2.channel_rule(args.in_chans),
    }
    with resilience.writing("the weights to", args.out, "--out"):
        weights.save(args.out, variables, metadata)
    print(f"wrote {args.out}: {args.model}, in_chans {args.in_chans}, img_size {args.img_size}")
