"""Landslide maps from trained runs (paper §4.2): every model x every TTA view, averaged.

    python -m jaxswin.predict --checkpoint RUN [RUN ...] --input FILE|DIR --output DIR

RUN is a ``best/`` folder written by jaxswin.train (model.safetensors, config.toml, stats.json),
a fold folder holding ``best/``, or a training workdir whose ``fold<k>/`` folders are all used.
Each model is built from its own config and normalises with its own statistics; the input is
read with the bands profile the models were trained on unless ``--bands`` says otherwise, and
channels are matched by name, so a model trained on one file layout predicts on another.

How a file becomes a map:
- It is cut into windows of the models' tile size (``model.img_size``), overlapping by a
  quarter, each percentile-scaled on its own (as the training tiles were), then z-scored per
  model. A tile of exactly that size is one window. A scene smaller than a tile in a direction
  is reflect-padded up to it (after scaling its real pixels) and the padding is cropped off.
- Each window's probabilities (sigmoid, averaged over models x views) are blended into the
  scene with a smooth sin² weight that falls towards the window's borders, so window seams
  vanish; a pixel covered by one window gets exactly that window's probability.
- The map thresholded at ``--threshold`` (probability > threshold) is written as a uint8 0/1
  GeoTIFF with the input's name, size, CRS and transform; ``--save-prob`` adds float32
  probabilities under prob/, ``--preview`` PNG overlays under preview/ (the paper's Fig. 2).

The device side is one jitted function of a fixed batch shape, the batch sharded over all local
devices, the models computing in ``--precision`` (fp32 by default; bf16 is the fast choice on
GPUs); models of one structure share a compiled body and are scanned over with stacked
weights. The last batch is padded and the padding discarded. A background thread reads and
cuts the next batch while the device computes, and one batch stays in flight.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from jaxswin import config as config_lib
from jaxswin import evaluate, metrics, models, parallel, runtime, tta, weights
from jaxswin.data import bands, io, normalize
from jaxswin.errors import ConfigError, DataError, UserError, cli

WEIGHTS, CONFIG, STATS = "model.safetensors", "config.toml", "stats.json"
OVERLAP = 0.25  # fraction of a window shared with its neighbour in a scene


# ----------------------------------------------------------------------------- checkpoints


def best_folders(run: str | Path) -> list[Path]:
    """The best/ folders a --checkpoint RUN names (a best/ folder, a fold folder, a workdir)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"--checkpoint {run}: no such folder")
    if (run / "best").is_dir():
        return [run / "best"]
    # A fold folder holds config.toml and stats.json too; only a best/ folder holds weights.
    if run.name == "best" or (run / WEIGHTS).exists():
        return [run]
    folds = sorted(
        (p for p in run.glob("fold*") if p.name[4:].isdigit() and (p / "best").is_dir()),
        key=lambda p: int(p.name[4:]),
    )
    if not folds:
        raise UserError(
            f"--checkpoint {run}: no trained model here: expected a best/ folder with {WEIGHTS}, "
            f"{CONFIG} and {STATS} (written by jaxswin.train), in RUN, RUN/best or RUN/fold<k>/best"
        )
    return [p / "best" for p in folds]


@dataclasses.dataclass(frozen=True)
class Member:
    """One trained model: where it came from, its config, normalisation statistics and weights."""

    folder: Path
    config: config_lib.Config
    stats: normalize.Stats
    variables: dict


def load_member(folder: Path) -> Member:
    lacking = [name for name in (WEIGHTS, CONFIG, STATS) if not (folder / name).is_file()]
    if lacking:
        raise UserError(
            f"--checkpoint {folder}: lacks {', '.join(lacking)}; a run's best/ folder holds "
            f"{WEIGHTS}, {CONFIG} and {STATS} (written by jaxswin.train)"
        )
    cfg = config_lib.load_file(folder / CONFIG)
    stats = normalize.Stats.load(folder / STATS)
    variables, _ = weights.load(folder / WEIGHTS)
    return Member(folder, cfg, stats, variables)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@functools.cache
def _expected_shapes(model_cfg: config_lib.ModelConfig) -> dict[str, tuple[int, ...]]:
    """Variable shapes the config builds, traced (not compiled) once per config."""
    module = models.build(model_cfg)
    return _shapes(jax.eval_shape(lambda: models.init(module, model_cfg, jax.random.key(0))))


def _check_structure(member: Member) -> None:
    """The weights must have the shapes the member's config builds (a clear error, not XLA's)."""
    want, have = _expected_shapes(member.config.model), _shapes(member.variables)
    if want != have:
        wrong = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise UserError(
            f"--checkpoint {member.folder}: {WEIGHTS} does not fit the model its {CONFIG} "
            f"describes ({len(wrong)} mismatched tensors, e.g. {wrong[0]})"
        )


# ----------------------------------------------------------------------------- the ensemble


def _blend_window(size: int) -> np.ndarray:
    """sin² bump over a window: strictly positive, smooth, ~0 at the borders, 1 at the centre."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


class _Scene:
    """Accumulates blended window probabilities of one input until every window is in."""

    def __init__(self, key, height: int, width: int, tile: int):
        stride = tile - int(tile * OVERLAP)
        self.key, self.tile = key, tile
        rows, columns = _starts(height, tile, stride), _starts(width, tile, stride)
        self.windows = [(y, x) for y in rows for x in columns]
        self.left = len(self.windows)
        self.total = np.zeros((height, width), np.float32)
        self.weight = np.zeros((height, width), np.float32)

    def add(self, prob: np.ndarray, y: int, x: int, blend: np.ndarray) -> None:
        h, w = min(self.tile, self.total.shape[0] - y), min(self.tile, self.total.shape[1] - x)
        self.total[y : y + h, x : x + w] += prob[:h, :w] * blend[:h, :w]
        self.weight[y : y + h, x : x + w] += blend[:h, :w]
        self.left -= 1

    def probability(self) -> np.ndarray:
        return self.total / self.weight


def scale_window(raw: np.ndarray, tile: int) -> np.ndarray:
    """Percentile-scales a window's real pixels, then reflect-pads it to tile x tile."""
    scaled = normalize.percentile_scale(raw)
    pad = ((0, tile - raw.shape[0]), (0, tile - raw.shape[1]), (0, 0))
    return np.pad(scaled, pad, mode="reflect") if raw.shape[:2] != (tile, tile) else scaled


def prefetched(iterable: Iterable) -> Iterator:
    """Iterates `iterable` in a background thread, one item ahead; its errors re-raise here."""
    iterator, end = iter(iterable), object()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxswin-read") as pool:
        upcoming = pool.submit(next, iterator, end)
        while (item := upcoming.result()) is not end:
            upcoming = pool.submit(next, iterator, end)
            yield item


def _stack(group: list[Member]):
    """One structure's members as scan inputs: stacked weights, mean and 1 / (std + eps)."""
    return (
        jax.tree.map(lambda *leaves: np.stack(leaves), *[m.variables for m in group]),
        np.stack([np.asarray(m.stats.mean, np.float32) for m in group]),
        # Stats.apply's z-score, (x - mean) * (1 / (std + eps)), done on the device.
        np.stack([1 / (np.float32(m.stats.std) + np.float32(normalize.EPS)) for m in group]),
    )


@functools.cache
def _compiled_proba(
    structures: tuple[config_lib.ModelConfig, ...], tta_name: str, sharding, precision: str
):
    """jit(fn(stacked groups, tiles (B, T, T, 7)) -> mean probability (B, T, T) over models x
    views); cached, so ensembles of the same structures (folds, ablation rows) compile once."""
    dtype = runtime.PRECISIONS[precision]
    modules, views = [models.build(cfg, dtype) for cfg in structures], tta.get(tta_name)

    def proba(stacked, tiles):
        count = sum(len(mean) for _, mean, _ in stacked)
        total = jnp.zeros(tiles.shape[:-1] + (1,), jnp.float32)
        for module, group in zip(modules, stacked):

            def add_member(total, member, module=module):
                variables, mean, scale = member

                def member_proba(rgb, aux):
                    logits = module.apply(variables, rgb, aux, train=False)
                    return jax.nn.sigmoid(logits.astype(jnp.float32))

                rgb, aux = normalize.split_streams((tiles - mean) * scale)
                return total + tta.average(member_proba, views, rgb, aux), None

            # One compiled body per structure, whatever the number of folds sharing it.
            total, _ = jax.lax.scan(add_member, total, group)
        return total[..., 0] / count

    return jax.jit(proba, out_shardings=sharding)


class Ensemble:
    """Trained models x TTA views, as one jitted, batch-sharded probability function.

    `predict_proba(tiles)` takes percentile-scaled canonical tiles (N, T, T, 7) (what
    jaxswin.data's Dataset.load() returns) and gives (N, T, T) probabilities;
    `predict_scenes(...)` takes raw images of any size and does the windowing.
    """

    def __init__(
        self,
        members: list[Member],
        tta_name: str = "rot4",
        batch_size: int = 32,
        precision: str = "fp32",
    ):
        if not members:
            raise UserError("--checkpoint: no models given")
        sizes = {m.config.model.img_size for m in members}
        if len(sizes) > 1:
            listing = ", ".join(f"{m.folder}: {m.config.model.img_size}" for m in members)
            raise UserError(f"--checkpoint: the models expect different tile sizes ({listing})")
        self.members, self.views = members, tta.get(tta_name)
        self.precision = runtime.resolve_precision(precision)
        self.tile = sizes.pop()
        self.blend = _blend_window(self.tile)
        placement = parallel.Placement.all_devices()
        self.batch_sharding, replicated = placement.data, placement.replicated
        # Fixed batch shape: a multiple of the device count so every device gets equal rows.
        self.batch_size = parallel.round_up(batch_size)

        groups: dict[config_lib.ModelConfig, list[Member]] = collections.defaultdict(list)
        for member in members:
            _check_structure(member)
            groups[member.config.model].append(member)
        self._stacked = jax.device_put([_stack(group) for group in groups.values()], replicated)
        self._proba = _compiled_proba(
            tuple(groups), tta_name, self.batch_sharding, self.precision
        )

    def run(self, batches: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """(tiles (n <= batch_size, T, T, 7), tag) -> (probabilities (n, T, T), tag), in order."""
        in_flight = None
        for tiles, tag in batches:
            padded = np.zeros((self.batch_size, *tiles.shape[1:]), np.float32)
            padded[: len(tiles)] = tiles
            probs = self._proba(self._stacked, jax.device_put(padded, self.batch_sharding))
            if in_flight is not None:
                yield _collect(*in_flight)
            in_flight = (probs, len(tiles), tag)
        if in_flight is not None:
            yield _collect(*in_flight)

    def predict_proba(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities (N, T, T) of percentile-scaled canonical tiles (N, T, T, 7)."""
        tiles = np.asarray(tiles, np.float32)
        if tiles.ndim != 4 or tiles.shape[1:] != (self.tile, self.tile, len(bands.CHANNELS)):
            raise DataError(
                f"expected tiles of shape (N, {self.tile}, {self.tile}, {len(bands.CHANNELS)}), "
                f"got {tiles.shape}"
            )
        step = self.batch_size
        chunks = ((tiles[i : i + step], None) for i in range(0, len(tiles), step))
        outputs = [probs for probs, _ in self.run(chunks)]
        return np.concatenate(outputs) if outputs else np.zeros(tiles.shape[:-1], np.float32)

    def predict_scenes(
        self, scenes: Iterable[tuple[Any, np.ndarray]]
    ) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, raw canonical image (H, W, 7)) -> (key, probabilities (H, W)), in input order.

        Windows from consecutive scenes share batches; reading (the `scenes` iterable) and
        cutting run in a background thread.
        """
        opened: collections.deque[_Scene] = collections.deque()

        def window_batches():
            tiles, where = [], []
            for key, image in scenes:
                scene = _Scene(key, image.shape[0], image.shape[1], self.tile)
                opened.append(scene)
                for y, x in scene.windows:
                    window = image[y : y + self.tile, x : x + self.tile]
                    tiles.append(scale_window(window, self.tile))
                    where.append((scene, y, x))
                    if len(tiles) == self.batch_size:
                        yield np.stack(tiles), where
                        tiles, where = [], []
            if tiles:
                yield np.stack(tiles), where

        for probs, where in self.run(prefetched(window_batches())):
            for prob, (scene, y, x) in zip(probs, where):
                scene.add(prob, y, x, self.blend)
            while opened and opened[0].left == 0:
                scene = opened.popleft()
                yield scene.key, scene.probability()

    def predict_scene(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (H, W) of one raw canonical image (H, W, 7) of any size."""
        ((_, prob),) = self.predict_scenes([(None, image)])
        return prob


def _collect(probs, count: int, tag):
    return np.asarray(probs)[:count], tag


def load_ensemble(
    paths: Iterable[str | Path],
    tta_name: str = "rot4",
    batch_size: int = 32,
    precision: str = "fp32",
) -> Ensemble:
    """The Ensemble of every model the RUN paths name (see best_folders)."""
    members = [load_member(folder) for path in paths for folder in best_folders(path)]
    return Ensemble(members, tta_name, batch_size, precision)


# ----------------------------------------------------------------------------- files


def write_geotiff(path: Path, array: np.ndarray, georef) -> None:
    """One-band GeoTIFF of `array` (H, W) with the input's CRS and transform."""
    profile = {
        "driver": "GTiff",
        "height": array.shape[0],
        "width": array.shape[1],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": georef["crs"],
        "transform": georef["transform"],
        "compress": "deflate",
    }
    with warnings.catch_warnings():
        # An input without georeferencing (e.g. a plain tifffile stack) gives an output without.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array, 1)


def write_preview(path: Path, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None):
    """PNG of the RGB bands, the prediction over them and, given, the ground truth (Fig. 2)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    rgb = normalize.percentile_scale(image[..., [bands.CHANNELS.index(c) for c in bands.RGB]])
    panels = [("RGB", None, None), ("prediction", pred, "#ff2a2a")]
    if truth is not None:
        panels.append(("ground truth", truth, "#2aff6a"))
    fig = Figure(figsize=(3 * len(panels), 3.2), layout="constrained")
    for ax, (title, overlay, colour) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(rgb)
        if overlay is not None:
            ax.imshow(np.ma.masked_equal(overlay, 0), cmap=ListedColormap([colour]), alpha=0.45)
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path, dpi=100)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(input_arg: Path, output: Path, targets: dict[Path, list[Path]]) -> None:
    """Nothing may be written inside --input, nor over an input (links resolved)."""
    if input_arg.is_dir() and _inside(output.resolve(), input_arg.resolve()):
        raise UserError(
            f"--output {output}: is inside --input {input_arg}; choose a separate folder"
        )
    sources = {source.resolve(): source for source in targets}
    for target in (t for paths in targets.values() for t in paths):
        if target.resolve() in sources:
            raise UserError(
                f"--output {output}: writing {target} would overwrite the input "
                f"{sources[target.resolve()]}; choose a separate folder"
            )


def _profile(members: list[Member], bands_arg: str | None) -> tuple[str, ...]:
    """The input's channels: --bands, else the profile every model was trained on."""
    if bands_arg:
        return bands.resolve(bands_arg)
    trained = {m.config.data.bands for m in members}
    if len(trained) > 1:
        raise ConfigError(
            f"--bands: the models were trained on different band profiles "
            f"({', '.join(sorted(trained))}); say which one the input uses"
        )
    return bands.resolve(trained.pop())


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m jaxswin.predict",
        description="Landslide masks from trained runs: models x TTA views averaged, thresholded, "
        "written as GeoTIFFs with the input's georeferencing.",
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="RUN",
                        help="best/ folder, fold folder or training workdir (all its folds)")
    parser.add_argument("--input", required=True, help="a GeoTIFF tile or scene, or a folder")
    parser.add_argument("--output", required=True, help="folder for the masks (not inside --input)")
    parser.add_argument("--tta", choices=tta.NAMES, help="views (default: the config's, rot4)")
    parser.add_argument("--threshold", type=float, help="probability cut (default: config, 0.51)")
    parser.add_argument("--bands", help="band profile of the input (default: the training profile)")
    parser.add_argument("--save-prob", action="store_true", help="also write float32 probabilities")
    parser.add_argument("--preview", action="store_true", help="also write PNG overlays")
    parser.add_argument("--masks", help="folder of ground-truth masks: also score the predictions")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch-size", type=int, help="tiles per call (default: config, 32)")
    parser.add_argument("--precision", choices=["auto", *runtime.PRECISIONS],
                        help="compute precision of the models (default: config, fp32; auto = bf16 "
                        "on recent GPUs, fp32 on CPU)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold {args.threshold}: must be a probability in [0, 1]")
    runtime.enable_compilation_cache()

    input_arg, output = Path(args.input), Path(args.output)
    if input_arg.is_dir():
        inputs = io.list_tiles(input_arg)
    elif input_arg.is_file():
        inputs = [input_arg]
    else:
        raise UserError(f"--input {input_arg}: no such file or folder")

    targets = {path: [output / path.name] for path in inputs}
    for path in inputs:
        if args.save_prob:
            targets[path].append(output / "prob" / path.name)
        if args.preview:
            targets[path].append(output / "preview" / f"{path.stem}.png")
    if args.masks:
        targets[inputs[0]].append(output / "metrics.json")
    check_output(input_arg, output, targets)
    existing = [t for paths in targets.values() for t in paths if t.exists()]
    if existing and not args.overwrite:
        raise UserError(
            f"--output {output}: {len(existing)} output file(s) exist already "
            f"(e.g. {existing[0]}); pass --overwrite to replace them"
        )
    truth = {}
    if args.masks:
        by_id = evaluate.tiles_by_id(args.masks)
        truth = dict(evaluate.pair({io.tile_id(p): p for p in inputs}, by_id, args.masks))

    members = [load_member(folder) for run in args.checkpoint for folder in best_folders(run)]
    first = members[0].config.predict
    channels = _profile(members, args.bands)
    tta_name = args.tta or first.tta
    ensemble = Ensemble(
        members, tta_name, args.batch_size or first.batch_size, args.precision or first.precision
    )
    threshold = first.threshold if args.threshold is None else args.threshold
    print(
        f"{len(members)} model(s) x {len(ensemble.views)} view(s) ({tta_name}), "
        f"tile {ensemble.tile}, {ensemble.precision}, threshold {threshold}, "
        f"{len(inputs)} input(s), {jax.device_count()} {jax.devices()[0].platform} device(s)",
        file=sys.stderr,
    )

    for sub in {t.parent for paths in targets.values() for t in paths}:
        sub.mkdir(parents=True, exist_ok=True)

    def scenes():
        for path in inputs:
            image, georef = io.read_image(path, channels, size=None)
            yield (path, georef, image), image

    counts = []
    for (path, georef, image), prob in tqdm(
        ensemble.predict_scenes(scenes()), total=len(inputs), unit="file", file=sys.stderr
    ):
        pred = (prob > threshold).astype(np.uint8)
        write_geotiff(output / path.name, pred, georef)
        if args.save_prob:
            write_geotiff(output / "prob" / path.name, prob.astype(np.float32), georef)
        mask = io.read_mask(truth[path], size=None) if path in truth else None
        if mask is not None:
            counts.append(evaluate.tile_counts(pred, mask, str(path)))
        if args.preview:
            write_preview(output / "preview" / f"{path.stem}.png", image, pred, mask)
    print(f"wrote {len(inputs)} mask(s) to {output}", file=sys.stderr)
    if counts:
        scores = {**metrics.summarize(counts), "tiles": len(counts)}
        (output / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
        print(evaluate.format_table(scores))


if __name__ == "__main__":
    main()
