"""Cross-validation folds over the labelled tiles (§4.2: 5-fold CV) and the official split.

Three ways to deal the tiles into folds (``data.folds``): "stratified" by foreground fraction
(jaxswin's; random over tiles: the optimistic score, every held-out tile has training
neighbours), "kfold", the authors' sklearn ``KFold(shuffle=True, random_state=seed)`` over the
labelled tiles in path order, restated here without sklearn (random too), and "spatial" (blocks
of ground with a buffer, :mod:`jaxswin.data.spatial`: the score on unseen terrain).
"""

from __future__ import annotations

import numpy as np

from jaxswin.data import spatial
from jaxswin.errors import ConfigError

CV_SPLITS = ("train", "val")  # the folds pool these; a test split stays held out


def held_out_kind(method: str, fold) -> str:
    """What a score's held-out tiles were, as every printed score says: "random fold",
    "spatial fold" or "official split"."""
    if fold == "official":
        return "official split"
    return "spatial fold" if method == "spatial" else "random fold"


def assign(fractions: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """A fold number per tile, stratified by foreground fraction and deterministic by seed.

    Tiles sorted by foreground fraction (ties in random order) are dealt out in runs of
    `num_folds`, each run in a random order over the folds, so every fold draws one tile from
    each stratum and fold sizes differ by at most one.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(len(fractions)), fractions))
    folds = np.empty(len(fractions), np.int64)
    for start in range(0, len(order), num_folds):
        run = order[start : start + num_folds]
        folds[run] = rng.permutation(num_folds)[: len(run)]
    return folds


def kfold(num_tiles: int, num_folds: int, seed: int) -> np.ndarray:
    """A fold number per tile as sklearn's KFold(num_folds, shuffle=True, random_state=seed).

    The positions 0..N-1 shuffled by numpy's legacy RandomState(seed), then cut into
    contiguous folds, the first N mod num_folds of them one tile larger.
    """
    order = np.arange(num_tiles)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(num_folds, num_tiles // num_folds)
    sizes[: num_tiles % num_folds] += 1
    folds = np.empty(num_tiles, np.int64)
    folds[order] = np.repeat(np.arange(num_folds), sizes)
    return folds


def _stratified(dataset, pool: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    return assign(dataset.foreground_fractions(pool), num_folds, seed)


def _kfold(dataset, pool: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    return kfold(len(pool), num_folds, seed)  # the pool is in path order: train/, then val/


# Random folds, data.folds -> fn(dataset, pool rows, num_folds, seed) -> a fold per pool row.
RANDOM_METHODS = {"stratified": _stratified, "kfold": _kfold}
METHODS = (*RANDOM_METHODS, "spatial")


def split(dataset, fold: int | str, num_folds: int = 5, seed: int = 42,
          method: str = "stratified", *, block_size: int = 4, buffer: int = 1,
          grid_pattern: str = ""):
    """(train_indices, val_indices) into `dataset.samples` (and the rows of `dataset.load()`).

    `fold` k in [0, num_folds) holds out the k-th fold (dealt by `method`, see METHODS) of all
    tiles of the train and val splits together; "official" is the dataset's own train/val split.
    `method` "spatial" holds out blocks of `block_size` tiles and leaves out of training the
    tiles within `buffer` of them (:mod:`jaxswin.data.spatial`).
    """
    if method not in METHODS:
        raise ConfigError(f"data.folds={method!r}: choose one of {', '.join(METHODS)}")
    if fold == "official":
        train, val = dataset.indices("train"), dataset.indices("val")
        if not len(train) or not len(val):
            raise ConfigError(
                f"--fold official: {dataset.root} needs both a train and a validation split "
                f"(labelled splits: {', '.join(dataset.splits)}); use a fold number (--fold 0) "
                f"instead, or add {dataset.root}/val/images and val/masks"
            )
        return train, val
    if seed < 0:
        raise ConfigError(f"data.fold_seed={seed}: must be a non-negative integer")
    if num_folds < 2:
        raise ConfigError(f"data.num_folds={num_folds}: cross-validation needs at least 2 folds")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < num_folds:
        raise ConfigError(
            f"--fold {fold}: expected a fold number from 0 to {num_folds - 1}, or 'official'"
        )
    pool = dataset.indices(*CV_SPLITS)
    if len(pool) < num_folds:
        raise ConfigError(
            f"data.num_folds={num_folds}: {dataset.root} has only {len(pool)} labelled "
            "train/val tiles"
        )
    if method == "spatial":
        train, held_out, _ = spatial.plan(
            dataset, pool, num_folds, seed, block_size, buffer, grid_pattern).split(fold)
        return train, held_out
    held_out = RANDOM_METHODS[method](dataset, pool, num_folds, seed) == fold
    return pool[~held_out], pool[held_out]


def stats_rows(dataset, train: np.ndarray, mode: str = "fold") -> np.ndarray:
    """The rows the z-score statistics and w+ come from (``data.stats``): "fold", the training
    fold's tiles only; "all", every labelled train/val tile, held-out fold included (the
    authors' code: one set for all folds, which lets the held-out tiles into the statistics)."""
    if mode == "fold":
        return np.asarray(train)
    if mode == "all":
        return dataset.indices(*CV_SPLITS)
    raise ConfigError(f"data.stats={mode!r}: choose 'fold' or 'all'")


def split_for(dataset, fold, data_cfg):
    """:func:`split` with the options of a run's `data` config section."""
    return split(dataset, fold, data_cfg.num_folds, data_cfg.fold_seed, data_cfg.folds,
                 block_size=data_cfg.block_size, buffer=data_cfg.buffer,
                 grid_pattern=data_cfg.grid_pattern)
