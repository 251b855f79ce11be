"""One square matmul's rate, fp32 and bf16, in XLA (under this process's $XLA_FLAGS) and, when
torch is installed, in PyTorch: whether a fast bf16 route (AVX512-BF16, AMX) exists on this CPU.

    python -m experiments.bench_matmul [--size 2048] [--repeats 9]
    XLA_FLAGS="--xla_cpu_experimental_onednn_fusion_type=dot" python -m experiments.bench_matmul

Prints GFLOP/s (median of the timed repeats, after one warm-up call) with the CPU's model and
features and the XLA flags in effect.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp

from experiments.bench import timed
from jaxswin import runtime


def xla_rates(size: int, repeats: int) -> dict[str, float]:
    rates = {}
    for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        a, b = (jax.random.normal(jax.random.key(i), (size, size), dtype) for i in (0, 1))
        matmul = jax.jit(jnp.dot)
        _, seconds = timed(lambda: matmul(a, b), 1, repeats, jax.block_until_ready)
        rates[name] = 2 * size**3 / seconds / 1e9
    return rates


def torch_rates(size: int, repeats: int) -> dict[str, float]:
    try:
        import torch
    except ImportError:
        return {}
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        _, seconds = timed(lambda: a @ b, 1, repeats, lambda result: result)
        rates[name] = 2 * size**3 / seconds / 1e9
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_matmul",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="n of the n×n matmul (2048)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per rate (9)")
    args = parser.parse_args(argv)
    if args.size < 1 or args.repeats < 1:
        raise SystemExit("error: --size and --repeats must be at least 1")
    cpu = runtime.cpu_info()
    print(f"{cpu['model']} ({cpu['cpuid']}; {' '.join(cpu['features'])}), "
          f"{len(os.sched_getaffinity(0))} cores; XLA_FLAGS '{os.environ.get('XLA_FLAGS', '')}'; "
          f"{args.size}² matmul, median of {args.repeats}, GFLOP/s")
    for framework, rates in (("xla", xla_rates(args.size, args.repeats)),
                             ("torch", torch_rates(args.size, args.repeats))):
        for precision, rate in rates.items():
            print(f"{framework} {precision}: {rate:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
