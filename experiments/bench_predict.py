"""Prediction throughput: tiles/s of the paper's ensemble (5 folds x 4 TTA views) on this device.

    python -m experiments.bench_predict [--preset paper] [--folds 5] [--tta rot4] [--tiles N]
        [--precision fp32|bf16|fp16|auto]

Random weights (speed does not depend on them) shared by every fold, random tiles of the
model's size. Two figures: the device path alone (`Ensemble.predict_proba` on tiles already
percentile-scaled in memory) and the whole scene path (`Ensemble.stream` of raw tiles: per-tile
percentile scaling in the reading thread, blending, plus the device path). Compile time is
reported apart. Nothing is asserted: the figures go into the README.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from jaxswin import config, inference, models
from jaxswin.data import bands, normalize


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tta", default="rot4")
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--tiles", type=int, default=8 if on_cpu else 512)
    parser.add_argument("--batch-size", type=int, default=4 if on_cpu else 32)
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | auto")
    args = parser.parse_args(argv)

    cfg = config.load(args.preset)
    _, variables = models.create(preset=args.preset, seed=0)
    variables = jax.device_get(variables)
    stats = normalize.Stats(bands.CHANNELS, (0.5,) * 7, (0.25,) * 7, pos_weight=1.86)
    members = [
        inference.Member(Path(f"random/fold{k}/best"), cfg, stats, variables)
        for k in range(args.folds)
    ]
    ensemble = inference.Ensemble(members, args.tta, args.batch_size, args.precision)
    size, views = ensemble.tile, len(ensemble.views)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(args.tiles, size, size, len(bands.CHANNELS))).astype(np.float32)
    scaled = np.stack([normalize.percentile_scale(tile) for tile in raw])

    device = jax.devices()[0]
    print(f"device: {jax.device_count()} x {device.platform} ({device.device_kind})")
    print(f"model: {args.preset} ({cfg.model.encoder}, {cfg.model.decoder}), {args.folds} folds x "
          f"{views} views ({args.tta}) = {args.folds * views} forward passes per tile, "
          f"tile {size}x{size}, batch {ensemble.batch_size}, {ensemble.precision}")

    start = time.perf_counter()
    ensemble.predict_proba(scaled[: ensemble.batch_size])
    print(f"compile + first batch: {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    ensemble.predict_proba(scaled)
    device_rate = args.tiles / (time.perf_counter() - start)

    start = time.perf_counter()
    for _ in ensemble.stream((None, lambda tile=tile: inference.ArrayReader(tile)) for tile in raw):
        pass
    scene_rate = args.tiles / (time.perf_counter() - start)

    print(f"device path (predict_proba): {device_rate:.2f} tiles/s "
          f"({device_rate * args.folds * views:.1f} model forwards/s) over {args.tiles} tiles")
    print(f"scene path (stream, with scaling and blending): {scene_rate:.2f} tiles/s")


if __name__ == "__main__":
    main()
