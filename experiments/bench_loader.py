"""Loader throughput: augmented training tiles/s through jaxswin.data.loader on this machine.

    python -m experiments.bench_loader [--data ROOT --bands PROFILE] [--epochs 3] [--workers 0 2]

Reads the dataset (default: the embedded synthetic one), fits fold 0's statistics, then runs
whole training epochs of the grain pipeline and prints tiles/s for: no augmentation, Table 4
augmentation with the geometric warp on the host (the default), and with the warp left to the
device (`device_warp=True`), at each worker count. The first epoch of each setting (compiles,
worker start-up: the workers then serve the following epochs) is timed apart. Last, the
batched warp alone on JAX's default device: what a training step pays when it takes the warp
over. Nothing is asserted: the figures go into the README.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxswin.data import augment, folds, loader, open_dataset
from jaxswin.data.normalize import Stats


def run_epochs(images, masks, indices, stats, epochs, **options):
    """(seconds of the first epoch, tiles/s over the following ones)."""
    timings, tiles = [], 0
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        for batch in loader.train_loader(images, masks, indices, stats, epoch=epoch, **options):
            if epoch:
                tiles += len(batch["rgb"])
        timings.append(time.perf_counter() - start)
    return timings[0], tiles / sum(timings[1:])


def bench_device_warp(size: int, batch_size: int, repeats: int = 20) -> float:
    rng = np.random.default_rng(0)
    batch = {
        "rgb": rng.random((batch_size, size, size, 3), dtype=np.float32),
        "aux": rng.random((batch_size, size, size, 4), dtype=np.float32),
        "mask": (rng.random((batch_size, size, size, 1)) < 0.35).astype(np.float32),
        "warp": np.stack([augment.sample_warp(rng, size, size) for _ in range(batch_size)]),
    }
    batch = jax.device_put(batch)
    jax.block_until_ready(augment.warp(batch))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(augment.warp(batch))
    return repeats * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="", help="dataset root (default: synthetic)")
    parser.add_argument("--bands", default="pbvs2026")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args(argv)

    dataset = open_dataset(args.data, args.bands)
    start = time.perf_counter()
    images, masks = dataset.load()
    load_seconds = time.perf_counter() - start
    train, _ = folds.split(dataset, 0)
    stats = Stats.fit(images[train], masks[train])
    print(f"dataset: {dataset} ({len(dataset) / load_seconds:.0f} tiles/s read and scaled); "
          f"fold 0: {len(train)} training tiles, global batch {args.batch_size}")
    print(f"host: {jax.local_devices(backend='cpu')[0].device_kind}, "
          f"default device: {jax.devices()[0].platform}")

    settings = [("no augmentation", {"augment": False}),
                ("augmented, warp on host", {"augment": True}),
                ("augmented, warp left to device", {"augment": True, "device_warp": True})]
    for workers in args.workers:
        for name, options in settings:
            first, rate = run_epochs(images, masks, train, stats, args.epochs,
                                     global_batch_size=args.batch_size, seed=0, workers=workers,
                                     **options)
            print(f"workers={workers}  {name:32s} {rate:8.0f} tiles/s   (first epoch {first:.2f} s)")

    for batch_size in (args.batch_size, 4 * args.batch_size):
        rate = bench_device_warp(dataset.size, batch_size)
        print(f"warp alone on {jax.devices()[0].platform}, batch {batch_size}: {rate:.0f} tiles/s")


if __name__ == "__main__":
    main()
