"""Process-wide JAX settings shared by the command-line tools (jaxswin.train, jaxswin.predict):
the compute precision for the devices at hand and the on-disk compilation cache."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from jaxswin.data.dataset import cache_dir
from jaxswin.errors import ConfigError

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}


def resolve_precision(name: str) -> str:
    """`auto`: bf16 on GPUs that have it (compute capability >= 8), fp16 on older ones such as
    the T4, bf16 on TPU, fp32 on CPU."""
    if name not in ("auto", *PRECISIONS):
        raise ConfigError(
            f"precision {name!r}: choose one of auto, {', '.join(PRECISIONS)} "
            "(--precision, or train.precision / predict.precision in the config)"
        )
    if name != "auto":
        return name
    device = jax.devices()[0]
    if device.platform == "gpu":
        capability = float(getattr(device, "compute_capability", "0") or 0)
        return "bf16" if capability >= 8.0 else "fp16"
    return "bf16" if device.platform == "tpu" else "fp32"


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs on disk ($JAX_COMPILATION_CACHE_DIR, else
    $JAXSWIN_CACHE/xla, else ~/.cache/jaxswin/xla): a resumed or repeated run skips the
    minute-long compile of the train step or of the prediction ensemble (the cache is keyed by
    program, devices and flags)."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
