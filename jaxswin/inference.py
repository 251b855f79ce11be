"""The inference engine: trained runs x TTA views as one compiled function, and scenes streamed
through it window by window (paper §4.2). `jaxswin.predict` is its command line.

    ensemble = load_ensemble(["runs/tiny"])          # the config's views, threshold, batch
    prob = ensemble.probability(image, "mmlsv2")      # raw (H, W, 7) in any band profile
    mask = ensemble.mask(image)                       # uint8: 1 landslide, 0 not, 255 nodata

A run is any folder jaxswin.train writes (see :func:`best_folders`). Each model is built from
its own config and z-scores with its own statistics; models of one structure share a compiled
body and are scanned over with stacked weights. The device side is one jitted function of a
fixed batch shape, the batch sharded over all local devices; the last batch is padded and the
padding discarded. A background thread reads and cuts the next batch while the device
computes, and one batch stays in flight.

How a scene becomes a map (:meth:`Ensemble.stream`):
- It is read a strip of rows at a time: the rows of one row of windows (the models' tile size
  ``model.img_size``, overlapping by a quarter), so memory is bounded by a strip, never by the
  scene. A pixel is nodata when any band is (the file's nodata value or mask, NaN, ±Inf, or
  values at float32's extremes, jaxswin.data.io.at_extremes).
- A window with no valid pixel is not computed. Every other window is percentile-scaled on its
  own valid pixels (as the training tiles were); its nodata pixels are then set to 0, the low
  end of each band's [P1, P99] range (windows straddling a collar see the collar as the
  darkest value, which the models met as the zero padding of training tiles' nodata). A scene
  smaller than a tile in a direction is reflect-padded up to it and the padding cropped off.
- Window probabilities (sigmoid, averaged over models x views) are blended with a smooth sin²
  weight that falls towards the window's borders, so seams vanish; a pixel covered by one
  window gets exactly that window's probability. A row of the scene is final once the last
  window row covering it is in: it goes to the sink then (NaN where nodata) and its
  accumulator rows are reused.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxswin import config as config_lib
from jaxswin import models, parallel, runtime, tta, weights
from jaxswin.data import bands, normalize
from jaxswin.errors import ConfigError, DataError, UserError

WEIGHTS, CONFIG, STATS = "model.safetensors", "config.toml", "stats.json"
OVERLAP = 0.25  # fraction of a window shared with its neighbour in a scene
NODATA = 255  # mask value of pixels without data (declared as the output's nodata)


# ----------------------------------------------------------------------------- checkpoints


def _fold_index(folder: Path) -> int | None:
    return int(folder.name[4:]) if folder.name[4:].isdigit() else None


def best_folders(run: str | Path) -> list[Path]:
    """The best/ folders a run names, for every layout jaxswin.train writes:

    a best/ folder; a fold folder (RUN/fold<k>, RUN/official) holding best/; or a training
    workdir: all its RUN/fold<k>/best (after ``--fold all`` or single folds; a fold<k> without
    best/ is an error), else its RUN/official/best (after ``--fold official``). Name
    RUN/official to use that model when the workdir holds folds too.
    """
    run = Path(run)
    if run.is_file():
        raise UserError(f"--checkpoint {run}: is a file; pass its folder ({run.parent}), which "
                        f"holds {WEIGHTS}, {CONFIG} and {STATS} together")
    if not run.is_dir():
        raise UserError(f"--checkpoint {run}: no such folder")
    if (run / "best").is_dir():
        return [run / "best"]
    # A fold folder holds config.toml and stats.json too; only a best/ folder holds weights.
    if run.name == "best" or (run / WEIGHTS).exists():
        return [run]
    folds = sorted((p for p in run.glob("fold*") if _fold_index(p) is not None and p.is_dir()),
                   key=_fold_index)
    finished = [p for p in folds if (p / "best").is_dir()]
    unfinished = [p for p in folds if p not in finished]
    if finished and unfinished:
        # Leaving them out would give an ensemble smaller than asked, without a word.
        lacking = ", ".join(
            f"{p.name} (only best.tmp/: its save was cut short)" if (p / "best.tmp").is_dir()
            else p.name for p in unfinished
        )
        raise UserError(
            f"--checkpoint {run}: not every fold has a trained model: no best/ in {lacking}; "
            "finish training them (rerun jaxswin.train), or name the folds to use: "
            + " ".join(str(p) for p in finished)
        )
    if finished:
        return [p / "best" for p in finished]
    if (run / "official" / "best").is_dir():
        return [run / "official" / "best"]
    raise UserError(
        f"--checkpoint {run}: no trained model here: expected a best/ folder with {WEIGHTS}, "
        f"{CONFIG} and {STATS} (written by jaxswin.train), in RUN, RUN/best, "
        "RUN/fold<k>/best or RUN/official/best"
    )


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
            f"checkpoint {folder}: lacks {', '.join(lacking)}; a run's best/ folder holds "
            f"{WEIGHTS}, {CONFIG} and {STATS} (written by jaxswin.train)"
        )
    cfg = config_lib.load_file(folder / CONFIG)
    stats = normalize.Stats.load(folder / STATS)
    variables, _ = weights.load(folder / WEIGHTS)
    # One NaN tensor makes every probability NaN, which the masks would show as nodata.
    broken = [name for name, value in weights.flatten(variables).items()
              if not np.isfinite(value).all()]
    if broken:
        raise UserError(
            f"checkpoint {folder}: {WEIGHTS} holds non-finite values (NaN or Inf) in "
            f"{len(broken)} tensor(s), e.g. {broken[0]}; the weights are damaged: copy them "
            "again from the training run, or retrain"
        )
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
            f"checkpoint {member.folder}: {WEIGHTS} does not fit the model its {CONFIG} "
            f"describes ({len(wrong)} mismatched tensors, e.g. {wrong[0]})"
        )


def trained_profile(members: list[Member]) -> tuple[str, ...] | None:
    """The band order every model was trained on (the default order of inputs); None when
    they differ (the input's profile must then be named)."""
    trained = {m.config.data.bands for m in members}
    return bands.resolve(trained.pop()) if len(trained) == 1 else None


# ----------------------------------------------------------------------------- windows


def blend_window(size: int) -> np.ndarray:
    """sin² bump over a window: strictly positive, smooth, ~0 at the borders, 1 at the centre."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def window_starts(length: int, tile: int) -> list[int]:
    """Starts of the windows along one axis: overlapping by OVERLAP, the last flush with the end."""
    stride = tile - int(tile * OVERLAP)
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


def scale_window(raw: np.ndarray, tile: int) -> np.ndarray:
    """Percentile-scales a window's valid pixels (nodata -> 0), then reflect-pads it to tile²."""
    scaled = normalize.percentile_scale(raw)
    pad = ((0, tile - raw.shape[0]), (0, tile - raw.shape[1]), (0, 0))
    return np.pad(scaled, pad, mode="reflect") if raw.shape[:2] != (tile, tile) else scaled


class Reader(Protocol):
    """A scene opened for reading: its size, and rows as canonical float32 (NaN = nodata)."""

    height: int
    width: int

    def read(self, row: int, count: int) -> np.ndarray: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a scene's finished rows go, top to bottom: probabilities (n, W), NaN = nodata."""

    def write(self, row: int, prob: np.ndarray) -> None: ...

    def close(self) -> Any: ...


@dataclasses.dataclass
class ArrayReader:
    """An in-memory canonical image (H, W, 7), NaN where nodata, as a Reader."""

    image: np.ndarray

    def __post_init__(self):
        self.height, self.width = self.image.shape[:2]

    def read(self, row: int, count: int) -> np.ndarray:
        return self.image[row : row + count]

    def close(self) -> None:
        pass


class ArraySink:
    """Collects a scene's probabilities into one (H, W) array (for scenes that fit in memory)."""

    def __init__(self, height: int, width: int):
        self.prob = np.empty((height, width), np.float32)

    def write(self, row: int, prob: np.ndarray) -> None:
        self.prob[row : row + len(prob)] = prob

    def close(self) -> np.ndarray:
        return self.prob


class _Strip:
    """A scene's blending accumulators over the rows one window row covers, [top, top + tile)."""

    def __init__(self, key, reader: Reader, tile: int, make_sink):
        self.key, self.reader, self.tile = key, reader, tile
        self.height, self.width = height, width = reader.height, reader.width
        self.rows, self.columns = window_starts(height, tile), window_starts(width, tile)
        self.make_sink, self.sink = make_sink, None
        self.top = 0
        self.total = np.zeros((tile, width), np.float32)
        self.weight = np.zeros((tile, width), np.float32)
        self.valid = np.zeros((tile, width), bool)
        self.done = False

    def add(self, prob: np.ndarray, y: int, x: int, blend: np.ndarray) -> None:
        r = y - self.top
        h, w = min(self.tile, self.height - y), min(self.tile, self.width - x)
        self.total[r : r + h, x : x + w] += prob[:h, :w] * blend[:h, :w]
        self.weight[r : r + h, x : x + w] += blend[:h, :w]

    def finish_row(self, index: int, valid: np.ndarray) -> None:
        """Window row `index` is in (its valid-pixel mask `valid`): its final rows go out."""
        if self.sink is None:
            self.sink = self.make_sink(self.key, self.reader)
        y = self.rows[index]
        self.valid[y - self.top : y - self.top + len(valid)] = valid
        end = self.rows[index + 1] if index + 1 < len(self.rows) else self.height
        n = end - self.top
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = self.total[:n] / self.weight[:n]
        prob[~self.valid[:n]] = np.nan  # every valid pixel lies in a computed window: weight > 0
        self.sink.write(self.top, prob)
        for buffer in (self.total, self.weight, self.valid):
            buffer[: self.tile - n] = buffer[n:].copy()
            buffer[self.tile - n :] = 0
        self.top = end
        self.done = end == self.height


def prefetched(iterable: Iterable) -> Iterator:
    """Iterates `iterable` in a background thread, one item ahead; its errors re-raise here."""
    iterator, end = iter(iterable), object()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxswin-read") as pool:
        upcoming = pool.submit(next, iterator, end)
        while (item := upcoming.result()) is not end:
            upcoming = pool.submit(next, iterator, end)
            yield item


# ----------------------------------------------------------------------------- the ensemble


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

    The views, threshold, batch size and precision default to the first model's config
    (``predict.*``); the input band profile to the one the models were trained on.
    """

    def __init__(
        self,
        members: list[Member],
        tta_name: str | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        threshold: float | None = None,
    ):
        if not members:
            raise UserError("checkpoint: no models given")
        sizes = {m.config.model.img_size for m in members}
        if len(sizes) > 1:
            listing = ", ".join(f"{m.folder}: {m.config.model.img_size}" for m in members)
            raise UserError(f"checkpoint: the models expect different tile sizes ({listing})")
        defaults = members[0].config.predict
        self.tta_name = tta_name or defaults.tta
        self.members, self.views = members, tta.get(self.tta_name)
        self.threshold = defaults.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold {self.threshold}: must be a probability in [0, 1]")
        batch_size = defaults.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size}: must be at least 1")
        self.precision = runtime.resolve_precision(precision or defaults.precision)
        self.profile = trained_profile(members)
        self.tile = sizes.pop()
        _check_batch_memory(batch_size, self.tile)
        self.blend = blend_window(self.tile)
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
            tuple(groups), self.tta_name, self.batch_sharding, self.precision
        )

    def run(self, batches: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """(tiles (n <= batch_size, T, T, 7), tag) -> (probabilities (n, T, T), tag), in order.

        A batch of no tiles (n = 0) passes its tag through without a device call.
        """
        in_flight = None
        for tiles, tag in batches:
            if len(tiles):
                padded = np.zeros((self.batch_size, *tiles.shape[1:]), np.float32)
                padded[: len(tiles)] = tiles
                probs = self._proba(self._stacked, jax.device_put(padded, self.batch_sharding))
            else:
                probs = None
            if in_flight is not None:
                yield _collect(*in_flight)
            in_flight = (probs, len(tiles), tag)
        if in_flight is not None:
            yield _collect(*in_flight)

    def predict_proba(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities (N, T, T) of percentile-scaled canonical tiles (N, T, T, 7) (what
        jaxswin.data's Dataset.load() returns)."""
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

    def _window_batches(self, sources: Iterable[tuple[Any, Callable[[], Reader]]], make_sink):
        """Batches of scaled windows, each with the events that place them: ("tile", strip, y, x)
        per window, ("row", strip, k, valid) once window row k is cut. Runs in the reader thread."""
        tile, batch, events = self.tile, [], []
        for key, open_reader in sources:
            reader = open_reader()
            try:
                strip = _Strip(key, reader, tile, make_sink)
                for k, y in enumerate(strip.rows):
                    rows = reader.read(y, min(tile, reader.height - y))
                    valid = ~np.isnan(rows).any(axis=-1)
                    for x in strip.columns:
                        if not valid[:, x : x + tile].any():
                            continue  # wholly nodata: nothing to predict
                        batch.append(scale_window(rows[:, x : x + tile], tile))
                        events.append(("tile", strip, y, x))
                        if len(batch) == self.batch_size:
                            yield np.stack(batch), events
                            batch, events = [], []
                    events.append(("row", strip, k, valid))
            finally:
                reader.close()
        if events:
            yield (np.stack(batch) if batch else np.zeros((0,))), events

    def stream(
        self,
        sources: Iterable[tuple[Any, Callable[[], Reader]]],
        make_sink: Callable[[Any, Reader], Sink] = lambda key, r: ArraySink(r.height, r.width),
    ) -> Iterator[tuple[Any, Any]]:
        """(key, open_reader) -> (key, sink.close()) per scene, in input order.

        Scenes are read a window row at a time in a background thread; windows of consecutive
        scenes share batches. `make_sink(key, reader)` gives the Sink a scene's finished rows
        are written to (called once the reader is closed: for its size and georeference) (by default an ArraySink: the result is the (H, W) probabilities).
        """
        for probs, events in self.run(prefetched(self._window_batches(sources, make_sink))):
            window = iter(probs)
            for kind, strip, *where in events:
                if kind == "tile":
                    prob = next(window)
                    if not np.isfinite(prob).all():
                        raise self._broken_models(strip.key)
                    strip.add(prob, *where, self.blend)
                    continue
                strip.finish_row(*where)
                if strip.done:
                    yield strip.key, strip.sink.close()

    def _broken_models(self, key) -> UserError:
        """Scaled windows are finite: a non-finite probability comes from a model, not the
        input (written out, it would pass for nodata)."""
        folders = ", ".join(str(m.folder) for m in self.members)
        return UserError(
            f"{key if key is not None else 'the input'}: the models gave non-finite "
            f"probabilities (NaN or Inf) for valid pixels; a model is broken: check the "
            f"{WEIGHTS} and {STATS} of {folders}, or leave the broken one out"
        )

    def probability(self, image: np.ndarray, profile: str | tuple[str, ...] | None = None):
        """Probabilities (H, W) of one raw image (H, W, C) of any size whose bands are in
        `profile` (a profile name, a list of channel names; default: the models' training
        profile). NaN where any band is nodata (NaN or ±Inf)."""
        canonical = self.canonical(image, profile)
        ((_, prob),) = self.stream([(None, lambda: ArrayReader(canonical))])
        return prob

    def mask(
        self,
        image: np.ndarray,
        profile: str | tuple[str, ...] | None = None,
        threshold: float | None = None,
    ) -> np.ndarray:
        """uint8 (H, W) map of one raw image: 1 landslide (probability > threshold, default the
        config's), 0 not, NODATA (255) where any band is nodata."""
        return to_mask(self.probability(image, profile), self.threshold if threshold is None
                       else threshold)

    def canonical(self, image: np.ndarray, profile=None) -> np.ndarray:
        """A raw (H, W, C) image in `profile`'s band order as canonical float32, NaN = nodata."""
        if profile is None and self.profile is None:
            trained = sorted({m.config.data.bands for m in self.members})
            raise ConfigError(
                f"the models were trained on different band profiles ({', '.join(trained)}); "
                "name the profile the input uses"
            )
        order = self.profile if profile is None else profile
        order = bands.resolve(order if isinstance(order, str) else ",".join(order))
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != len(order):
            raise DataError(
                f"expected an image of shape (H, W, {len(order)}) in the band order "
                f"{', '.join(order)}, got {image.shape}"
            )
        image = image.astype(np.float32)[..., bands.to_canonical(order)]
        image[~np.isfinite(image)] = np.nan
        return image


def _check_batch_memory(batch_size: int, tile: int) -> None:
    """A batch's tiles alone must fit in half the machine's memory (they are held on the host
    and copied to the devices, besides the models' activations); a larger batch would only
    stop with a MemoryError."""
    tile_bytes = tile * tile * len(bands.CHANNELS) * np.dtype(np.float32).itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if batch_size * tile_bytes > memory / 2:
        raise ConfigError(
            f"batch size {batch_size}: its {tile}x{tile} tiles alone take "
            f"{batch_size * tile_bytes / 2**30:.1f} GiB, more than half this machine's "
            f"{memory / 2**30:.1f} GiB; use at most {int(memory / 2 // tile_bytes)} (--batch-size "
            "or predict.batch_size; a few dozen tiles already keep a device busy)"
        )


def to_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask of probabilities: 1 where > threshold, 0 elsewhere, NODATA where NaN."""
    with np.errstate(invalid="ignore"):
        mask = (prob > threshold).astype(np.uint8)
    mask[np.isnan(prob)] = NODATA
    return mask


def _collect(probs, count: int, tag):
    if probs is None:
        return np.zeros((0,)), tag
    return np.asarray(probs)[:count], tag


def load_ensemble(
    paths: Iterable[str | Path],
    tta_name: str | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    threshold: float | None = None,
) -> Ensemble:
    """The Ensemble of every model the run paths name (see best_folders); unset options come
    from the first model's config."""
    members = [load_member(folder) for path in paths for folder in best_folders(path)]
    return Ensemble(members, tta_name, batch_size, precision, threshold)
