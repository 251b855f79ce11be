"""Mapping large scenes: wall time, megapixels per second and peak RSS of `jaxswin.predict`.

    python -m experiments.bench_scene [--sizes 4000 10000 20000] [--workdir /work/tmp/bench_scene]

The tiny preset, one model (random weights: speed does not depend on them), rot4 views, on
synthetic 7-band float32 scenes of SIZE x SIZE pixels with a nodata collar (a diamond of valid
pixels inside a border: about a fifth of the scene is nodata, and whole windows in its corners
are never computed). Each scene is generated to disk strip by strip (never whole in memory;
20,000² is 11 GB), mapped by `python -m jaxswin.predict` in a child process of its own, whose
peak RSS and CPU time are read from the kernel (wait4), and deleted. On a machine shared with
other jobs the CPU time per valid megapixel is the steadier figure; wall time is printed too. A first 512² run warms the persistent
compilation cache and gives the fixed cost (start-up, loading, compile): the "mapping" time of
each scene is its wall time less that. Nothing is asserted: the figures go into the README.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from jaxswin import config, inference, models, runtime, weights
from jaxswin.data import bands, normalize

MARS_EQC = "+proj=eqc +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +R=3396190 +units=m +no_defs"
NODATA = -9999.0
STRIP = 512  # rows generated at a time


def valid_pixels(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """The scene's footprint: a diamond (|u| + |v| < 0.7 in the unit square) inside a 2% border."""
    u, v = (cols + 0.5) / size - 0.5, (rows + 0.5) / size - 0.5
    return (np.abs(u) + np.abs(v) < 0.7) & (np.maximum(np.abs(u), np.abs(v)) < 0.48)


def write_scene(path: Path, size: int, order: tuple[str, ...], seed: int = 0) -> int:
    """A SIZE² 7-band float32 scene in the band `order`, written strip by strip; its number of
    valid pixels."""
    rng = np.random.default_rng(seed)
    frequencies, amplitudes = rng.uniform(0.5, 2, (2, 7)), rng.uniform(1, 100, 7)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 7, "dtype": "float32",
        "nodata": NODATA, "crs": MARS_EQC, "transform": rasterio.Affine(6.0, 0, 0, 0, -6.0, 0),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "bigtiff": "YES",
    }
    valid_count = 0
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, STRIP):
            rows = np.arange(top, min(top + STRIP, size))
            yy, xx = rows[:, None, None] / 37.0, cols[None, :, None] / 37.0
            strip = np.sin(yy * frequencies[0] + xx * frequencies[1]) * amplitudes
            strip = (strip + rng.standard_normal(strip.shape, np.float32) * 3).astype(np.float32)
            valid = valid_pixels(rows[:, None], cols[None, :], size)
            strip[~valid] = NODATA
            valid_count += int(valid.sum())
            stored = strip[..., [bands.CHANNELS.index(c) for c in order]]
            dst.write(np.moveaxis(stored, -1, 0), window=Window(0, top, size, len(rows)))
    return valid_count


def make_run(folder: Path, preset: str) -> Path:
    """A best/ folder of the preset's model with random weights, as jaxswin.train writes it."""
    cfg = config.load(preset)
    _, variables = models.create(preset=preset, seed=0)
    best = folder / "best"
    weights.save(best / inference.WEIGHTS, variables)
    (best / inference.CONFIG).write_text(config.to_toml(cfg))
    normalize.Stats(bands.CHANNELS, (0.5,) * 7, (0.25,) * 7, pos_weight=1.86).save(
        best / inference.STATS
    )
    return best


# The engine without the models: the device function gives zeros (reading, nodata, scaling,
# blending and writing measured at scales a shared CPU cannot push the models through in time).
ENGINE_ONLY = (
    "import sys, jax; from jaxswin import inference, predict; "
    "inference._compiled_proba = lambda *_, sharding=None, **__: jax.jit(lambda stacked, tiles: "
    "tiles[..., 0] * 0); predict.main(sys.argv[1:])"
)


def map_scene(best: Path, scene: Path, output: Path, env: dict, tta: str, engine_only=False):
    """(wall seconds, CPU seconds, peak RSS in GiB) of one `jaxswin.predict` child process."""
    program = ["-c", ENGINE_ONLY] if engine_only else ["-m", "jaxswin.predict"]
    command = [sys.executable, *program, "--checkpoint", str(best),
               "--input", str(scene), "--output", str(output), "--tta", tta, "--overwrite"]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stderr = child.stderr.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"jaxswin.predict failed on {scene}:\n{stderr[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20  # kB -> GiB


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    cpu = runtime.cpu_info()
    return f"{cpu['model']} ({cpu['cpuid']}; {' '.join(cpu['features'])}), {os.cpu_count()} cores"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 10000, 20000])
    parser.add_argument("--workdir", default="/work/tmp/bench_scene",
                        help="scratch folder for the scenes (outside the repository)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tta", default="rot4")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--engine-only", action="store_true",
                        help="replace the models by zeros: the cost of everything else")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAXSWIN_CACHE": str(workdir / "cache")}
    cfg = config.load(args.preset)
    order = bands.resolve(cfg.data.bands)
    best = make_run(workdir / "run", args.preset)
    print(f"CPU: {cpu_model()}; load average before: {load_average()}", flush=True)

    warm = workdir / "warm.tif"
    write_scene(warm, 512, order)
    mapped = functools.partial(map_scene, best, output=workdir / "out", env=env, tta=args.tta,
                               engine_only=args.engine_only)
    mapped(warm)
    fixed, fixed_cpu, warm_rss = mapped(warm)  # compile cached
    warm.unlink()
    print(f"fixed cost (512² scene, compile cached): {fixed:.1f} s wall, {fixed_cpu:.1f} s CPU, "
          f"peak RSS {warm_rss:.2f} GiB", flush=True)

    results = []
    for size in args.sizes:
        scene = workdir / f"scene_{size}.tif"
        start = time.perf_counter()
        valid = write_scene(scene, size, order)
        written = time.perf_counter() - start
        load = load_average()
        try:
            seconds, cpu, rss = mapped(scene)
        finally:
            scene.unlink()
            shutil.rmtree(workdir / "out", ignore_errors=True)
        mapping, mapping_cpu = seconds - fixed, cpu - fixed_cpu
        row = {
            "size": size, "megapixels": size * size / 1e6, "valid_megapixels": valid / 1e6,
            "wall_s": seconds, "mapping_s": mapping, "mpx_per_s": size * size / 1e6 / seconds,
            "s_per_valid_mpx": mapping / (valid / 1e6), "cpu_s": cpu,
            "cpu_s_per_valid_mpx": mapping_cpu / (valid / 1e6), "peak_rss_gib": rss,
            "scene_written_s": written, "load_average": load,
        }
        results.append(row)
        print(f"{size}²: {row['megapixels']:.0f} Mpx ({row['valid_megapixels']:.0f} valid), "
              f"wall {seconds:.0f} s, {row['mpx_per_s']:.3f} Mpx/s, "
              f"{row['s_per_valid_mpx']:.1f} s per valid Mpx; CPU {cpu:.0f} s, "
              f"{row['cpu_s_per_valid_mpx']:.1f} CPU s per valid Mpx; peak RSS {rss:.2f} GiB "
              f"(load average {load})", flush=True)
    if len(results) > 1:
        last, before = results[-1], results[-2]
        print(f"per valid Mpx, {last['size']}² / {before['size']}²: wall time "
              f"{last['s_per_valid_mpx'] / before['s_per_valid_mpx']:.2f}, CPU time "
              f"{last['cpu_s_per_valid_mpx'] / before['cpu_s_per_valid_mpx']:.2f}")
    if args.json:
        figures = {"cpu": cpu_model(), "preset": args.preset, "tta": args.tta,
                   "engine_only": args.engine_only,
                   "fixed_s": fixed, "fixed_cpu_s": fixed_cpu, "scenes": results}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(workdir / "run", ignore_errors=True)


if __name__ == "__main__":
    main()
