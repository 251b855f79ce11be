"""Process-wide JAX settings shared by the command-line tools (jaxswin.train, jaxswin.predict):
the host CPU's description and the XLA flags that suit it, the compute precision for the devices
at hand and the on-disk compilation cache."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from jaxswin.data.dataset import cache_dir
from jaxswin.errors import ConfigError

log = logging.getLogger("jaxswin.runtime")

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


# XLA CPU flags that made the paper model's train step faster on a CPU family beyond the run-to-run
# spread (README, "Benchmarks"), set per process by use_cpu_flags. Intel Xeon with AVX-512 and AMX:
# oneDNN and YNNPACK dot fusions, 1.24 and 1.26 train tiles/s against XLA's defaults' 0.89 and 1.04.
# On the AMD EPYC (Zen 5) they were within the spread, so it keeps XLA's defaults.
# Measured with jaxlib 0.10; other releases may rename experimental flags (XLA aborts on a name it
# does not know), so they get XLA's defaults.
CPU_XLA_FLAGS = {
    "intel": ("--xla_cpu_experimental_onednn_fusion_type=dot",
              "--xla_cpu_experimental_ynn_fusion_type=dot"),
}
CPU_FLAGS_JAXLIB = "0.10."
DEFAULTS_VARIABLE = "JAXSWIN_XLA_DEFAULTS"  # set to 1: XLA's defaults on every CPU


def use_cpu_flags(environ=os.environ, family: str | None = None) -> list[str]:
    """Adds the CPU_XLA_FLAGS of the host's CPU family (`family`: cpu_info()'s) to XLA_FLAGS in
    `environ`, each unless XLA_FLAGS already sets that flag, and returns those added; none when
    $JAXSWIN_XLA_DEFAULTS is 1 or jaxlib is not of the release they were measured with.
    XLA reads XLA_FLAGS when JAX starts its backends: call it before."""
    if environ.get(DEFAULTS_VARIABLE, "0") != "0" or not jaxlib.__version__.startswith(
            CPU_FLAGS_JAXLIB):
        return []
    current = environ.get("XLA_FLAGS", "")
    named = {flag.split("=")[0] for flag in current.split()}
    flags = CPU_XLA_FLAGS.get(family or cpu_info()["family"], ())
    added = [flag for flag in flags if flag.split("=")[0] not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def report_cpu_flags(added: list[str]) -> None:
    """One info line naming the flags use_cpu_flags added (once logging is set up)."""
    if added:
        log.info("XLA flags for this %s CPU: %s (JAXSWIN_XLA_DEFAULTS=1 keeps XLA's defaults)",
                 cpu_info()["family"].capitalize(), " ".join(added))
