"""Converts a state dict of the PyTorch twin (experiments/torch_twin.py) to jaxswin variables.

    python convert/twin_to_flax.py --checkpoint TWIN.pth [--preset paper] [--set model.k=v ...]
        --out DIR

writes DIR/model.safetensors ({"params", "batch_stats"}, as a training run's best/ folder holds)
and DIR/config.toml. Add the stats.json of the twin's training data beside them to predict.

The encoders go through jaxswin.models.swinv2.timm_to_flax; every other tensor maps by name
(the twin's modules are named like the Flax variables): conv/linear weights become kernels in
Flax layout, BatchNorm weights scales, running means/vars batch_stats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from jaxswin import config, models, weights
from jaxswin.config import ModelConfig
from jaxswin.errors import UserError, cli
from jaxswin.models import swinv2

ENCODERS = {"rgb_encoder": 3, "aux_encoder": 4}
BATCH_STATS = {"running_mean": "mean", "running_var": "var"}


def flax_path(name: str, ndim: int) -> str:
    """'decoder.proj_0.bn.running_var' -> 'batch_stats/decoder/proj_0/bn/var', and so on."""
    *path, leaf = name.split(".")
    if leaf in BATCH_STATS:
        return "/".join(["batch_stats", *path, BATCH_STATS[leaf]])
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return "/".join(["params", *path, leaf])


def twin_to_flax(state_dict: dict[str, np.ndarray], model_cfg: ModelConfig) -> dict:
    """{"params", "batch_stats"} for `models.build(model_cfg)` from the twin's state dict
    (numpy arrays). Unknown, missing and misshapen tensors are reported together."""
    module = models.build(model_cfg)
    shapes = jax.eval_shape(lambda: models.init(module, model_cfg, jax.random.key(0)))
    expected = {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    flat, unknown = {}, []
    for prefix, in_chans in ENCODERS.items():
        encoder = {
            name[len(prefix) + 1 :]: array
            for name, array in state_dict.items()
            if name.startswith(prefix + ".")
        }
        converted = swinv2.timm_to_flax(encoder, swinv2.CONFIGS[model_cfg.encoder], in_chans)
        for key, value in weights.flatten(converted["params"]).items():
            flat[f"params/{prefix}/{key}"] = value
    for name, array in state_dict.items():
        if name.split(".")[0] in ENCODERS or name.endswith("num_batches_tracked"):
            continue
        array = np.asarray(array, np.float32)
        key = flax_path(name, array.ndim)
        if key not in expected:
            unknown.append(name)
        else:
            flat[key] = swinv2.torch_to_flax_layout(array)
    problems = {
        "unknown": unknown,
        "missing": sorted(expected.keys() - flat.keys()),
        "misshapen": [
            f"{k} {v.shape} (model: {expected[k]})"
            for k, v in flat.items()
            if k in expected and v.shape != expected[k]
        ],
    }
    if any(problems.values()):
        found = "; ".join(
            f"{len(names)} {kind}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
            for kind, names in problems.items()
            if names
        )
        raise UserError(f"twin weights do not fit the model ({found})")
    return weights.unflatten(flat)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(prog="twin_to_flax.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="the twin's state dict (.pth/.pt)"
    )
    parser.add_argument(
        "--preset", default="paper", help="config the twin was built from (default: paper)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="change one config value, e.g. --set model.img_size=256 (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)

    import torch  # only this script needs torch

    from experiments.torch_twin import check_config

    cfg = config.load(args.preset, args.overrides)
    check_config(cfg.model)
    if not args.checkpoint.is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: no such file")
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(f"--checkpoint {args.checkpoint}: cannot read it ({err})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--checkpoint {args.checkpoint}: not a state dict of tensors")
    variables = twin_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg.model)
    args.out.mkdir(parents=True, exist_ok=True)
    weights.save(args.out / "model.safetensors", variables, {"source": str(args.checkpoint)})
    (args.out / "config.toml").write_text(config.to_toml(cfg))
    print(
        f"wrote {args.out}/model.safetensors and config.toml; "
        "add the training data's stats.json beside them to predict"
    )


if __name__ == "__main__":
    main()
