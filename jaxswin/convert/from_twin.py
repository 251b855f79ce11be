"""Converts a state dict of the PyTorch twin (experiments/torch_twin.py) to jaxswin variables.

    jaxswin-convert twin --checkpoint TWIN.pth [--preset paper] [--set model.k=v ...] --out DIR

writes DIR/model.safetensors ({"params", "batch_stats"}, as a training run's best/ folder holds)
and DIR/config.toml (existing ones only with --overwrite). Add the stats.json of the twin's
training data beside them to predict.

The encoders go through jaxswin.models.swinv2.timm_to_flax; every other tensor maps by name
(the twin's modules are named like the Flax variables): conv/linear weights become kernels in
Flax layout, BatchNorm weights scales, running means/vars batch_stats. Only names and shapes are
needed, so the twin's own code (which lives in the repository, not the package) is not imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from jaxswin import config, models, resilience, weights
from jaxswin.config import ModelConfig
from jaxswin.convert import from_timm
from jaxswin.errors import ConfigError, UserError
from jaxswin.inference import CONFIG, STATS, WEIGHTS
from jaxswin.models import swinv2

DESCRIPTION = "Convert a state dict of the PyTorch twin to a jaxswin run folder."
ENCODERS = {"rgb_encoder": 3, "aux_encoder": 4}
BATCH_STATS = {"running_mean": "mean", "running_var": "var"}
# ModelConfig fields the twin implements, with the only values it implements.
TWIN_VARIANT = {
    "arch": "dual",
    "fusion": "concat",
    "decoder": "unetpp",
    "deep_supervision": False,
    "input_attention": "none",
    "encoder_attention": "none",
    "decoder_attention": "none",
}


def check_config(model_cfg: ModelConfig) -> None:
    """ConfigError unless `model_cfg` is the variant the twin implements."""
    wrong = {
        key: getattr(model_cfg, key)
        for key, value in TWIN_VARIANT.items()
        if getattr(model_cfg, key) != value
    }
    if wrong:
        raise ConfigError(f"the torch twin implements only {TWIN_VARIANT}; this config has {wrong}")


def flax_path(name: str, ndim: int) -> str:
    """'decoder.proj_0.bn.running_var' -> 'batch_stats/decoder/proj_0/bn/var', and so on."""
    *path, leaf = name.split(".")
    if leaf in BATCH_STATS:
        return "/".join(["batch_stats", *path, BATCH_STATS[leaf]])
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return "/".join(["params", *path, leaf])


def _expected_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    module = models.build(model_cfg)
    shapes = jax.eval_shape(lambda: models.init(module, model_cfg, jax.random.key(0)))
    return {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }


def _check_fit(flat: dict, expected: dict, unknown: list[str]) -> None:
    """One UserError listing every unknown, missing and misshapen tensor."""
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
        raise UserError(f"twin weights do not fit the model ({weights.describe_misfit(problems)})")


def twin_to_flax(state_dict: dict[str, np.ndarray], model_cfg: ModelConfig) -> dict:
    """{"params", "batch_stats"} for `models.build(model_cfg)` from the twin's state dict
    (numpy arrays). Unknown, missing and misshapen tensors are reported together."""
    expected = _expected_shapes(model_cfg)
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
    _check_fit(flat, expected, unknown)
    return weights.unflatten(flat)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="the twin's state dict (.pth/.pt, or .safetensors)")
    config.add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace the {WEIGHTS} and {CONFIG} of an existing --out")


def run(args: argparse.Namespace) -> None:
    cfg = config.from_args(args)
    check_config(cfg.model)
    for name in (WEIGHTS, CONFIG):
        weights.check_target(args.out / name, "--out", args.overwrite)
    state = from_timm.read_checkpoint(args.checkpoint)
    variables = twin_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg.model)
    with resilience.writing("the weights to", args.out, "--out"):
        args.out.mkdir(parents=True, exist_ok=True)
        weights.save(args.out / WEIGHTS, variables, {"source": str(args.checkpoint)})
        (args.out / CONFIG).write_text(config.to_toml(cfg))
    # A stats.json already there (a trained run's best/) belongs to another model, maybe.
    stats = (f"the {STATS} already there is kept: it must be the statistics of the twin's "
             "training data" if (args.out / STATS).exists()
             else f"add the training data's {STATS} beside them to predict")
    print(f"wrote {args.out}/{WEIGHTS} and {CONFIG}; {stats}")
