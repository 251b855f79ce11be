"""DualSwinFusionSeg and its ablation variants (paper §3 and §4.4), built from a ModelConfig.

    module, variables = create("paper")            # or create("tiny", decoder="fpn"), ...
    logits = module.apply(variables, rgb, aux)      # (B,H,W,3), (B,H,W,4) -> (B,H,W,1) float32
    # training: train=True, rngs={"dropout": key}, mutable=["batch_stats"]
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxswin import config, weights
from jaxswin.config import ModelConfig
from jaxswin.errors import ConfigError
from jaxswin.models import swinv2
from jaxswin.models.dualswin import MODELS, validate

PATCH_KERNEL = "patch_embed/proj/kernel"


def build(model_cfg: ModelConfig, dtype=jnp.float32) -> nn.Module:
    """The module of `model_cfg.arch`; ConfigError if any model field has no valid value."""
    validate(model_cfg)
    return MODELS[model_cfg.arch](model_cfg, dtype)


def init(module: nn.Module, model_cfg: ModelConfig, rng: jax.Array) -> dict:
    """Fresh variables {"params", "batch_stats"} (float32) for a module made by `build`."""
    side = model_cfg.img_size
    rgb = jnp.zeros((1, side, side, 3), jnp.float32)
    aux = jnp.zeros((1, side, side, 4), jnp.float32)
    variables = jax.jit(module.init)({"params": rng}, rgb, aux)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def load_pretrained(variables: dict, model_cfg: ModelConfig, path: str | Path) -> dict:
    """`variables` with every SwinV2 encoder replaced by the converted timm weights in `path`
    (a file of jaxswin.models.swinv2.load). The patch embedding is adapted to each encoder's
    channels by swinv2.adapt_in_chans (the AUX encoder's channel-mean warm start); encoder
    parameters the file lacks (encoder attention gates) keep their values."""
    module, pretrained = swinv2.load(path)
    if module.config != swinv2.CONFIGS[model_cfg.encoder]:
        found = [name for name, cfg in swinv2.CONFIGS.items() if cfg == module.config]
        raise ConfigError(
            f"{path}: holds a SwinV2 {found[0] if found else module.config} encoder, but "
            f"model.encoder is {model_cfg.encoder!r}; convert the matching checkpoint or set "
            f"model.encoder to match the file"
        )
    source = weights.flatten(pretrained["params"])
    params = dict(variables["params"])
    for name in [n for n in params if n.endswith("encoder")]:
        target = weights.flatten(params[name])
        in_chans = target[PATCH_KERNEL].shape[2]
        try:
            kernel = swinv2.adapt_in_chans(source[PATCH_KERNEL], in_chans)
        except swinv2.ConversionError as err:
            raise ConfigError(f"{path}: {err}") from None
        loaded = {**source, PATCH_KERNEL: kernel}
        misfits = [
            f"{key} {value.shape} (model: {target[key].shape if key in target else 'none'})"
            for key, value in loaded.items()
            if key not in target or target[key].shape != value.shape
        ]
        if misfits:
            raise ConfigError(f"{path}: weights that do not fit {name}: {', '.join(misfits)}")
        params[name] = jax.tree.map(jnp.asarray, weights.unflatten({**target, **loaded}))
    return {**variables, "params": params}


def create(
    preset: str = "paper",
    *,
    seed: int = 0,
    dtype=jnp.float32,
    pretrained: str | Path | None = None,
    **model_overrides,
) -> tuple[nn.Module, dict]:
    """(module, variables) of a preset's model with `model_overrides` (ModelConfig fields),
    initialised from `seed`, with encoders from a converted timm file if `pretrained`."""
    cfg = config.merge(config.load(preset), {"model": model_overrides}, "create()").model
    module = build(cfg, dtype)
    variables = init(module, cfg, jax.random.key(seed))
    if pretrained is not None:
        variables = load_pretrained(variables, cfg, pretrained)
    return module, variables
