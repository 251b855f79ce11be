"""Process-wide JAX settings shared by the command-line tools (jaxswin.train, jaxswin.predict):
the host CPU's description, the compute precision for the devices at hand and the on-disk
compilation cache."""

from __future__ import annotations

import os
import platform
from pathlib import Path

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


# The vector and matrix units that decide which kernels run fast on a CPU.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
CPU_FAMILIES = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def cpu_info() -> dict:
    """The host CPU: model name, family ("intel", "amd" or "other"), its cpuid family and model
    numbers (a VM's model name often hides the generation: "AMD EPYC") and CPU_FEATURES it has."""
    fields: dict[str, str] = {}
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not key.strip():  # the first processor's block is enough
            break
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or "unknown CPU",
            "family": CPU_FAMILIES.get(fields.get("vendor_id", ""), "other"),
            "cpuid": f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}",
            "features": [f for f in CPU_FEATURES if f in flags]}
