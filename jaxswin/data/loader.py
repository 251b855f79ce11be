"""Batches for training and evaluation, from tiles already in memory.

Training runs one grain pipeline over the epochs:

    tiles of the fold -> shuffle (anew each epoch) -> Augment (per record) -> whole global
    batches of each epoch -> this process's rows -> batch [-> worker processes]
    -> z-score, split streams, geometric warp (one jitted XLA pass on the host CPU)

Shuffling and augmentation depend only on (seed, epoch, position in the epoch), never on the
number of processes or workers, so rerunning an epoch (a resumed run) gives the same batches
and the rows of all processes together are the same global batch at any process count.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import math
from collections.abc import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jaxswin import parallel
from jaxswin.data import augment as augment_lib
from jaxswin.data.normalize import Stats, split_streams
from jaxswin.errors import ConfigError


# Tiles are in memory: a couple of threads overlap the per-tile numpy work with the XLA pass
# (both release the GIL), and a few batches of read-ahead bound the memory (grain's defaults,
# 16 threads and 500 elements, are sized for remote storage).
_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


class _Tiles:
    """Random access to the tiles `indices` of in-memory arrays (a grain data source)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: np.ndarray):
        self.images, self.masks, self.indices = images, masks, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        row = self.indices[index]
        return {"image": self.images[row], "mask": self.masks[row]}

    def __repr__(self) -> str:
        return f"_Tiles({len(self)} of {len(self.images)})"


def soften_borders(mask: jax.Array, smoothing: float) -> jax.Array:
    """(B, H, W) {0, 1} -> targets eased by `smoothing` towards 1/2 on the pixels at a class
    border (a 3x3 neighbour of the other class): the hand-drawn edge is the least certain."""
    window = (1, 3, 3)
    high = jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, window, (1, 1, 1), "SAME")
    low = jax.lax.reduce_window(mask, jnp.inf, jax.lax.min, window, (1, 1, 1), "SAME")
    return jnp.where(high > low, mask * (1 - smoothing) + smoothing / 2, mask)


@functools.partial(jax.jit, static_argnames=("stats", "apply_warp", "border", "border_smoothing"))
def _finish(batch: dict, stats: Stats, apply_warp: bool, border: str = "reflect",
            border_smoothing: float = 0.0) -> dict:
    """Batched tiles -> model inputs in one XLA pass: z-score, band dropout, split streams,
    softened borders, warp."""
    image = stats.apply(batch["image"])
    if "keep" in batch:  # a dropped band sits at its mean, 0 after the z-score
        image = image * batch["keep"][:, None, None, :]
    rgb, aux = split_streams(image)
    mask = batch["mask"].astype(jnp.float32)
    if border_smoothing:
        mask = soften_borders(mask, border_smoothing)
    out = {"rgb": rgb, "aux": aux, "mask": mask[..., None]}
    if "warp" in batch:
        out["warp"] = batch["warp"]
        if border == "constant":  # 0 in the percentile-scaled tile, i.e. before the z-score
            zeros = jnp.zeros((len(batch["warp"]), rgb.shape[-1] + aux.shape[-1]), jnp.float32)
            out["fill_rgb"], out["fill_aux"] = split_streams(stats.apply(zeros))
    return augment_lib.warp(out) if apply_warp else out


def _finish_on_host(batch: dict, stats: Stats, apply_warp: bool, border: str = "reflect",
                    border_smoothing: float = 0.0) -> dict:
    # Pinned to the CPU: the loader yields numpy, whatever the default device.
    cpu = jax.local_devices(backend="cpu")[0]
    return jax.device_get(_finish(jax.device_put(batch, cpu), stats, apply_warp, border,
                                  border_smoothing))


def last_batch_size(num_tiles: int, global_batch_size: int, drop_last: bool,
                    row_multiple: int = 1) -> int:
    """Rows of an epoch's last partial batch: 0 with `drop_last`, else the remainder cut down
    to a multiple of `row_multiple` (the device count: every device takes an equal share)."""
    if drop_last:
        return 0
    return num_tiles % global_batch_size // row_multiple * row_multiple


def steps_per_epoch(num_tiles: int, global_batch_size: int, drop_last: bool = True,
                    row_multiple: int = 1) -> int:
    """Global batches in an epoch of `num_tiles`: the whole ones, and with `drop_last` false
    the last partial one (see last_batch_size)."""
    if num_tiles < global_batch_size:
        raise ConfigError(
            f"train.batch_size={global_batch_size} is larger than the {num_tiles} training "
            "tiles; lower the batch size"
        )
    partial = last_batch_size(num_tiles, global_batch_size, drop_last, row_multiple)
    return num_tiles // global_batch_size + (partial > 0)


def train_loader(
    images: np.ndarray, masks: np.ndarray, indices: np.ndarray, stats: Stats, *,
    global_batch_size: int, seed: int, epoch: int, start_step: int = 0,
    augment: bool = True, augment_strength: str = "standard", band_dropout: float = 0.0,
    blur: str = "kernel", border: str = "reflect", border_smoothing: float = 0.0,
    workers: int = 2, device_warp: bool = False, drop_last: bool = True, row_multiple: int = 1,
    process_index: int | None = None, process_count: int | None = None,
) -> Iterator[dict]:
    """One epoch of training batches for this process.

    Yields steps_per_epoch(len(indices), global_batch_size, drop_last, row_multiple) dicts of
    numpy arrays: "rgb" (b, H, W, 3), "aux" (b, H, W, 4), "mask" (b, H, W, 1) float32, with
    b = global_batch_size // process_count, and with `drop_last` false a last batch of the
    epoch's remaining tiles (last_batch_size rows over all processes; a second batch shape,
    so one more compilation of the training step). `blur` and `border` are data.blur and
    data.affine_border (with device_warp, batches carry the border's fill values for warp).
    `images` are percentile-scaled (N, H, W, 7) (Dataset.load()), `indices` the training
    rows. `workers` > 0 runs the per-tile work in that many grain worker processes (worth it
    with spare cores; 0 runs it inline).
    `device_warp=True` leaves the geometric warp to the caller: batches then carry "warp"
    (b, 2, 3) and the caller applies :func:`jaxswin.data.augment.warp` on its device.
    `start_step` > 0 skips the epoch's first batches, for a run resumed mid-epoch: the rest are
    the batches an uninterrupted epoch would yield from there.
    `augment_strength` and `band_dropout` choose the augmentation (:class:`Augment`),
    `border_smoothing` eases the mask towards 1/2 at class borders (:func:`soften_borders`).
    `process_index`/`process_count` default to JAX's.
    """
    if not 0.0 <= border_smoothing < 1.0:
        raise ConfigError(f"data.border_smoothing={border_smoothing}: a value in [0, 1)")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"train.seed={seed}: the data seed must be in [0, 2**32)")
    process_index, process_count = parallel.process_layout(process_index, process_count)
    local_batch = parallel.local_share(global_batch_size, process_count)
    steps = len(indices) // global_batch_size  # whole batches
    steps_per_epoch(len(indices), global_batch_size)  # checks the batch fits the tiles
    last = last_batch_size(len(indices), global_batch_size, drop_last,
                           math.lcm(row_multiple, process_count))
    if not 0 <= start_step < steps + (last > 0):
        raise ValueError(f"start_step={start_step} outside an epoch of {steps + (last > 0)} steps")
    # Every epoch from here on, back to back. Grain reshuffles each repetition of the tiles
    # and seeds each record's generator by its position in the stream; slicing keeps the whole
    # global batches of every epoch (reads past a slice's end continue in the next epoch).
    ds = grain.MapDataset.source(_Tiles(images, masks, indices)).shuffle(seed=seed)
    if augment:
        ds = ds.random_map(augment_lib.Augment(augment_strength, band_dropout, blur), seed=seed)
    tiles = ds
    # A global batch is the processes' blocks of rows in process order, as
    # jax.make_array_from_process_local_data assembles it: every row sits where a single
    # process would have it, and so draws the same dropout and drop-path noise.
    ds = ds[: steps * global_batch_size].batch(local_batch, drop_remainder=True)
    first = min(start_step, steps)  # a resumed epoch's first whole batch
    ds = ds[process_index::process_count].repeat()[epoch * steps + first :]
    finish = functools.partial(_finish_on_host, stats=stats, apply_warp=augment and not device_warp,
                               border=border, border_smoothing=border_smoothing)
    if workers == 0:
        batches = map(finish, ds[: steps - first].to_iter_dataset(_READ))
    else:
        # The tiles by identity (they are large), the rest by value.
        setup = ((images, masks), (tuple(np.asarray(indices).tolist()), stats, global_batch_size,
                                   seed, augment, blur, workers, device_warp, augment_strength,
                                   band_dropout, border_smoothing, process_index, process_count))
        batches = _worker_stream(setup, ds, workers, epoch, first).epoch(steps - first, finish)
    if not last:
        return batches
    # The epoch's tiles after its whole batches (grain reads index epoch*N + i as tile i of
    # epoch `epoch`'s shuffle), this process's block of them, in the main process.
    share = last // process_count
    start = epoch * len(indices) + steps * global_batch_size + process_index * share
    return itertools.chain(batches, [finish(_stacked(tiles, start, share))])


def _stacked(records, start: int, count: int) -> dict:
    """Records start..start+count-1 of a grain dataset as one batch of stacked arrays."""
    rows = [records[start + i] for i in range(count)]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


class _Stream:
    """Batches from worker processes over all epochs from one on, kept between epochs.

    Worker processes take seconds to start (each imports grain and receives the tiles), longer
    than an epoch of a few hundred tiles on an accelerator, so a run starts them once: the call
    for the next epoch with the same setup continues the same stream.
    """

    def __init__(self, setup: tuple, iterator, epoch: int, start_step: int):
        self.setup, self.iterator = setup, iterator
        self.next_epoch, self.next_step = epoch, start_step  # where the stream stands

    def serves(self, setup: tuple, epoch: int, start_step: int) -> bool:
        (arrays, params), (own_arrays, own_params) = setup, self.setup
        same_arrays = all(a is b for a, b in zip(arrays, own_arrays))
        return ((epoch, start_step) == (self.next_epoch, self.next_step) and same_arrays
                and params == own_params)

    def epoch(self, steps: int, finish) -> Iterator[dict]:
        complete = False
        try:
            for _ in range(steps):
                yield finish(next(self.iterator))
            complete = True
            self.next_epoch, self.next_step = self.next_epoch + 1, 0
        finally:
            if not complete:  # stopped mid-epoch: the stream is no longer at an epoch start
                self.close()

    def close(self) -> None:
        global _stream
        self.iterator.close()
        if _stream is self:
            _stream = None


_stream: _Stream | None = None


@atexit.register
def _close_stream() -> None:
    # Stop the workers before interpreter shutdown, so grain can release most of the batches
    # in flight (the resource tracker reports the rest as leaked shared memory).
    if _stream is not None:
        _stream.close()


def _worker_stream(setup: tuple, ds: grain.MapDataset, workers: int, epoch: int,
                   start_step: int) -> _Stream:
    global _stream
    if _stream is not None and _stream.serves(setup, epoch, start_step):
        return _stream
    if _stream is not None:
        _stream.close()
    # Grain reads an absl flag when it starts workers; programs that do not run absl.app never
    # parse flags, so take the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=workers)
    _stream = _Stream(setup, ds.to_iter_dataset(_READ).mp_prefetch(options).__iter__(), epoch,
                      start_step)
    return _stream


def eval_loader(
    images: np.ndarray,
    masks: np.ndarray,
    indices: np.ndarray,
    stats: Stats,
    batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict]:
    """Evaluation batches over `indices` in order, every one of the same shape.

    Like training batches plus "weight" float32 (b,): 1 for a tile, 0 for the padding that fills
    the last batch. `batch_size` is global; each process yields its share of every batch.
    """
    process_index, process_count = parallel.process_layout(process_index, process_count)
    local_batch = parallel.local_share(batch_size, process_count)
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size][process_index * local_batch :][:local_batch]
        pad = local_batch - len(rows)
        batch = {
            "image": np.concatenate([images[rows], np.zeros((pad, *images.shape[1:]), np.float32)]),
            "mask": np.concatenate([masks[rows], np.zeros((pad, *masks.shape[1:]), masks.dtype)]),
        }
        batch = _finish_on_host(batch, stats, apply_warp=False)
        batch["weight"] = (np.arange(local_batch) < len(rows)).astype(np.float32)
        yield batch
