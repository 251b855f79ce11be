"""Forward-pass speed of the Flax SwinV2 (jitted) against timm's (torch eager), same machine.

    python experiments/bench_swinv2.py [--model swinv2_small_window8_256] [--img-size 128]
        [--batch 8] [--runs 5] [--threads N]

Both run on the CPU with the same cores (--threads pins the process to the first N cores and
sets torch's thread count; default: all cores). Each timing is the median of --runs forward
passes after warm-up, the two alternating (the JAX compile happens in warm-up and is reported
separately). Prints milliseconds per batch for both and the ratio JAX / torch. On a machine
shared with other jobs the figures swing widely (torch's thread pool suffers most).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="swinv2_small_window8_256")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    # Pin before jax/torch start their thread pools, so both see the same cores.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])

    import jax
    import jax.numpy as jnp
    import numpy as np
    import timm
    import torch

    from jaxswin.models import swinv2

    torch.set_num_threads(args.threads)
    size, batch = args.img_size, args.batch
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)

    model = timm.create_model(
        args.model, features_only=True, out_indices=(0, 1, 2, 3), img_size=size
    ).eval()
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def torch_forward():
        with torch.inference_mode():
            model(torch_images)

    module = swinv2.SwinV2(swinv2.CONFIGS[args.model], img_size=size)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    forward = jax.jit(module.apply)
    jax_images = jnp.asarray(images)

    def jax_forward():
        jax.block_until_ready(forward(variables, jax_images))

    compile_s = seconds(jax_forward)
    jax_forward()
    torch_forward()
    torch_forward()
    # Interleaved, so that load from other processes weighs on both alike.
    jax_times, torch_times = [], []
    for _ in range(args.runs):
        jax_times.append(seconds(jax_forward))
        torch_times.append(seconds(torch_forward))
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)

    print(
        f"{args.model} forward, {batch}x{size}x{size}x3, CPU, {args.threads} threads, "
        f"median of {args.runs}"
    )
    print(f"  jax {jax.__version__} (jit): {1e3 * jax_s:.1f} ms/batch (compile {compile_s:.1f} s)")
    print(
        f"  timm {timm.__version__} / torch {torch.__version__} (eager): "
        f"{1e3 * torch_s:.1f} ms/batch"
    )
    print(f"  ratio jax/torch: {jax_s / torch_s:.2f}")


if __name__ == "__main__":
    main()
