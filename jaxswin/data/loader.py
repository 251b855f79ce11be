"""Batches for training and evaluation, from tiles already in memory.

Training runs a grain pipeline per epoch:

    tiles of the fold -> shuffle (per epoch) -> Augment (per record) -> this epoch, whole
    global batches only -> this process's rows -> batch [-> worker processes]
    -> z-score, split streams, geometric warp (one jitted XLA pass on the host CPU)

Shuffling and augmentation depend only on (seed, epoch, position in the epoch), never on the
number of processes or workers, so rerunning an epoch (a resumed run) gives the same batches
and the rows of all processes together are the same global batch at any process count.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

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


@functools.partial(jax.jit, static_argnames=("stats", "apply_warp"))
def _finish(batch: dict, stats: Stats, apply_warp: bool) -> dict:
    """Batched tiles -> model inputs in one XLA pass: z-score, split streams, warp."""
    rgb, aux = split_streams(stats.apply(batch["image"]))
    out = {"rgb": rgb, "aux": aux, "mask": batch["mask"][..., None].astype(jnp.float32)}
    if "warp" in batch:
        out["warp"] = batch["warp"]
    return augment_lib.warp(out) if apply_warp else out


def _finish_on_host(batch: dict, stats: Stats, apply_warp: bool) -> dict:
    # Pinned to the CPU: the loader yields numpy, whatever the default device.
    cpu = jax.local_devices(backend="cpu")[0]
    return jax.device_get(_finish(jax.device_put(batch, cpu), stats, apply_warp))


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_count is None:
        process_count = jax.process_count()
    if process_index is None:
        process_index = jax.process_index()
    return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ConfigError(
            f"batch size {global_batch_size} must be a positive multiple of the "
            f"{process_count} JAX process(es), each loading an equal share"
        )
    return global_batch_size // process_count


def steps_per_epoch(num_tiles: int, global_batch_size: int) -> int:
    """Whole global batches in an epoch of `num_tiles` (the remainder is dropped)."""
    if num_tiles < global_batch_size:
        raise ConfigError(
            f"train.batch_size={global_batch_size} is larger than the {num_tiles} training "
            "tiles; lower the batch size"
        )
    return num_tiles // global_batch_size


def train_loader(
    images: np.ndarray,
    masks: np.ndarray,
    indices: np.ndarray,
    stats: Stats,
    *,
    global_batch_size: int,
    seed: int,
    epoch: int,
    augment: bool = True,
    workers: int = 2,
    device_warp: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict]:
    """One epoch of training batches for this process.

    Yields steps_per_epoch(len(indices), global_batch_size) dicts of numpy arrays: "rgb"
    (b, H, W, 3), "aux" (b, H, W, 4), "mask" (b, H, W, 1) float32, with
    b = global_batch_size // process_count. `images` are percentile-scaled (N, H, W, 7)
    (Dataset.load()), `indices` the training rows. `workers` > 0 runs the per-tile work in
    that many grain worker processes (worth it with spare cores; 0 runs it inline).
    `device_warp=True` leaves the geometric warp to the caller: batches then carry "warp"
    (b, 2, 3) and the caller applies :func:`jaxswin.data.augment.warp` on its device.
    `process_index`/`process_count` default to JAX's.
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, process_count)
    epoch_size = steps_per_epoch(len(indices), global_batch_size) * global_batch_size
    start = epoch * len(indices)
    # Grain reshuffles each repetition and seeds each record's generator by its position.
    ds = grain.MapDataset.source(_Tiles(images, masks, indices)).shuffle(seed=seed).repeat()
    if augment:
        ds = ds.random_map(augment_lib.Augment(), seed=seed)
    ds = ds[start : start + epoch_size][process_index::process_count]
    ds = ds.batch(local_batch, drop_remainder=True)
    return _run(ds, workers, stats, augment and not device_warp)


def _run(ds: grain.MapDataset, workers: int, stats: Stats, apply_warp: bool) -> Iterator[dict]:
    if workers > 0:
        # Grain reads an absl flag when it starts workers; programs that do not run absl.app
        # never parse flags, so take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iterator = ds.to_iter_dataset(_READ).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers)
        ).__iter__()
    else:
        iterator = ds.to_iter_dataset(_READ).__iter__()
    try:
        for batch in iterator:
            yield _finish_on_host(batch, stats, apply_warp)
    finally:
        iterator.close()  # stops the workers when the caller stops early


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
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(batch_size, process_count)
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
