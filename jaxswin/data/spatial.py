"""Spatial cross-validation folds: held-out tiles come from blocks of ground no training tile touches.

Random folds over tiles give every held-out tile training tiles for neighbours, so they score
the model on ground it has nearly seen (the paper's own gap: 0.867 mIoU on development tiles
interleaved with the training area against 0.783 on an isolated test region). Here:

1. Each tile gets a footprint in tile units and a grid cell (row, col): the cell holding its
   centre. A georeferenced tile's footprint is its bounds from the GeoTIFF transform divided by
   the tiles' ground size, when every tile of the pool has a transform in one CRS (so tiles
   a scene's tiler shifted to fit its edge, as in MMLSv2, overlap their neighbours as they do
   on the ground). Otherwise the cell comes from the file name: the default
   patterns read ``colX_rowY`` (MMLSv2), ``rowY_colX`` and ``..._R_C`` (MMLS v1's
   ``patch_R_C``: row, then column); ``data.grid_pattern`` replaces them with a regular
   expression whose named groups ``row`` and ``col`` are matched against the tile id.
2. Cells are grouped into square blocks of ``data.block_size`` x ``data.block_size`` tiles.
3. Blocks are dealt to K folds so that each fold holds about 1/K of the tiles and of the
   foreground pixels (largest blocks first, each to the fold it fills least, then improving
   moves and swaps of single blocks), in an order shuffled by ``data.fold_seed``.
4. For fold k, the training set is every other tile except those whose footprint comes within
   ``data.buffer`` - 1 tiles of a held-out tile's (buffer 1: touching at an edge or a corner,
   or overlapping); those are dropped from this fold's training set, so no held-out tile
   touches a training tile.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from jaxswin.errors import ConfigError, DataError

# Tried in turn on the tile id (file name without Image_/Mask_ and suffix) when no --grid-pattern.
DEFAULT_GRID_PATTERNS = (
    r"col_?(?P<col>\d+)[_-]row_?(?P<row>\d+)",  # MMLSv2: col00012_row00007
    r"row_?(?P<row>\d+)[_-]col_?(?P<col>\d+)",
    r"(?P<row>\d+)[_-](?P<col>\d+)$",  # MMLS v1: patch_R_C
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where the pool's tiles lie and which fold holds each out.

    Arrays are per tile of `pool` (rows of the dataset): `boxes` footprints (top, left, bottom,
    right) in tile units, `rows`/`cols` grid cells (from 0), `blocks` block number, `folds` the
    fold that holds the tile out. `source` says where the footprints came from ("georeference"
    or "file names").
    """

    pool: np.ndarray
    boxes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    blocks: np.ndarray
    folds: np.ndarray
    fractions: np.ndarray
    num_folds: int
    buffer: int
    source: str

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, held-out, dropped) dataset rows of `fold`; dropped = the buffer's tiles."""
        held = self.folds == fold
        near = self.near(held)
        return self.pool[~held & ~near], self.pool[held], self.pool[~held & near]

    def near(self, held: np.ndarray) -> np.ndarray:
        """Tiles within `buffer` cells (edge or corner) of a tile marked in `held`."""
        if not self.buffer:
            return np.zeros(len(held), bool)
        return (gaps(self.boxes, self.boxes[held]) <= self.buffer - 1 + 1e-6).any(axis=1)

    def summary(self) -> list[dict]:
        """Per fold: held-out tiles, their foreground fraction, training and dropped tiles."""
        out = []
        for k in range(self.num_folds):
            train, held, dropped = self.split(k)
            in_fold = self.folds == k
            out.append({
                "fold": k,
                "blocks": len(np.unique(self.blocks[in_fold])),
                "held_out": len(held),
                "foreground": float(self.fractions[in_fold].mean()) if len(held) else 0.0,
                "train": len(train),
                "dropped": len(dropped),
            })
        return out


def gaps(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, B) clear distance between footprints, the larger of the row and column gaps:
    0 where they touch at an edge or a corner, negative where they overlap."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    row_gap = np.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
    col_gap = np.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3])
    return np.maximum(row_gap, col_gap)


def georeferenced_boxes(paths) -> np.ndarray | None:
    """(N, 4) footprints (top, left, bottom, right) in tile units, rows counted south from the
    northernmost edge, from the files' transforms; None unless every file has one in a single
    CRS. The unit is the tiles' median ground size."""
    corners, steps, crs = [], [], None
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    if src.crs is None or src.transform.is_identity:
                        return None
                    if crs is None:
                        crs = src.crs
                    elif src.crs != crs:
                        return None
                    t = src.transform
                    if t.b or t.d:  # rotated grids have no row/column cells
                        return None
                    corners.append((t.f, t.c))
                    steps.append((src.height * abs(t.e), src.width * abs(t.a)))
        except RasterioError as err:
            raise DataError(f"{path}: not a readable GeoTIFF ({err})") from None
    if not corners:
        return None
    corners, steps = np.array(corners), np.array(steps)
    pitch = np.median(steps, axis=0)
    # North up: rows count down from the northernmost edge, columns east from the westernmost.
    top = (corners[:, 0].max() - corners[:, 0]) / pitch[0]
    left = (corners[:, 1] - corners[:, 1].min()) / pitch[1]
    return np.stack([top, left, top + steps[:, 0] / pitch[0], left + steps[:, 1] / pitch[1]], 1)


def named_cells(ids, grid_pattern: str = "") -> np.ndarray:
    """(N, 2) grid cells (row, col) read from tile ids by `grid_pattern` (or the defaults)."""
    try:
        patterns = [re.compile(grid_pattern)] if grid_pattern else [
            re.compile(p, re.IGNORECASE) for p in DEFAULT_GRID_PATTERNS]
    except re.error as err:
        raise ConfigError(f"data.grid_pattern={grid_pattern!r}: not a regular expression ({err})"
                          ) from None
    if grid_pattern and not {"row", "col"} <= set(patterns[0].groupindex):
        raise ConfigError(f"data.grid_pattern={grid_pattern!r}: needs the named groups "
                          "(?P<row>...) and (?P<col>...)")
    cells = []
    for tile_id in ids:
        match = next((m for p in patterns if (m := p.search(tile_id))), None)
        try:
            cells.append((int(match["row"]), int(match["col"])))
        except (TypeError, ValueError):
            how = (f"data.grid_pattern={grid_pattern!r}" if grid_pattern else
                   "the default patterns (colX_rowY, rowY_colX, ..._R_C)")
            raise DataError(
                f"tile '{tile_id}': not georeferenced, and {how} find no grid row and column "
                "in its name; set data.grid_pattern to a regex with (?P<row>\\d+) and "
                "(?P<col>\\d+) groups, or use data.folds=\"stratified\""
            ) from None
    cells = np.array(cells, np.int64).reshape(-1, 2)
    return cells - cells.min(axis=0)


def tile_boxes(samples, grid_pattern: str = "") -> tuple[np.ndarray, str]:
    """Footprints of `samples` in tile units and where they came from; an explicit pattern wins."""
    if not grid_pattern:
        boxes = georeferenced_boxes([s.image for s in samples])
        if boxes is not None:
            return boxes, "georeference"
    cells = named_cells([s.id for s in samples], grid_pattern).astype(np.float64)
    return np.concatenate([cells, cells + 1.0], axis=1), "file names"


def tile_cells(boxes: np.ndarray) -> np.ndarray:
    """(N, 2) grid cells (row, col): the cell holding each footprint's centre."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.floor(centres + 1e-6).astype(np.int64)


def balance(counts: np.ndarray, foreground: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """A fold per block, evening out tiles and foreground per fold.

    Cost: the squared relative deviations of each fold's tile count and foreground sum from
    1/K of the total. Greedy (largest blocks first, ties in seeded random order), then single
    moves and pairwise swaps of blocks while they lower the cost.
    """
    rng = np.random.default_rng(seed)
    loads = np.stack([counts, foreground], axis=1).astype(np.float64)
    target = loads.sum(axis=0) / num_folds
    target[target == 0] = 1.0
    loads /= target  # each fold should reach (1, 1)

    def cost(totals):
        return float(((totals - 1.0) ** 2).sum())

    folds = np.empty(len(counts), np.int64)
    totals = np.zeros((num_folds, 2))
    for b in np.lexsort((rng.permutation(len(counts)), -counts)):
        k = int(np.argmin((totals + loads[b]).sum(axis=1) + 1e-9 * rng.random(num_folds)))
        folds[b], totals[k] = k, totals[k] + loads[b]
    improved = True
    while improved:
        improved = False
        for b in rng.permutation(len(counts)):
            here = folds[b]
            for k in range(num_folds):
                trial = totals.copy()
                trial[here] -= loads[b]
                trial[k] += loads[b]
                if k != here and (totals[here] - loads[b])[0] > 0 and cost(trial) < cost(totals) - 1e-12:
                    folds[b], totals, here, improved = k, trial, k, True
            for c in range(len(counts)):
                there = folds[c]
                if there == here:
                    continue
                trial = totals.copy()
                delta = loads[c] - loads[b]
                trial[here] += delta
                trial[there] -= delta
                if cost(trial) < cost(totals) - 1e-12:
                    folds[b], folds[c], totals, here, improved = there, here, trial, there, True
    return folds


def plan(dataset, pool: np.ndarray, num_folds: int, seed: int, block_size: int = 4,
         buffer: int = 1, grid_pattern: str = "") -> Plan:
    """The spatial folds of `pool` (dataset rows); see the module docstring."""
    if block_size < 1:
        raise ConfigError(f"data.block_size={block_size}: a block is at least 1 tile wide")
    if buffer < 1:
        raise ConfigError(f"data.buffer={buffer}: at least 1 tile, so that no held-out tile "
                          "touches a training tile")
    boxes, rows, cols, source = _positions(dataset, pool, grid_pattern)
    block_cells = np.stack([rows // block_size, cols // block_size], axis=1)
    _, blocks = np.unique(block_cells, axis=0, return_inverse=True)
    blocks = blocks.reshape(-1)
    if blocks.max() + 1 < num_folds:
        raise ConfigError(
            f"data.block_size={block_size}: the {len(pool)} tiles of {dataset.root} fill only "
            f"{blocks.max() + 1} blocks, fewer than data.num_folds={num_folds}; use smaller blocks"
        )
    fractions = dataset.foreground_fractions(pool)
    counts = np.bincount(blocks)
    foreground = np.bincount(blocks, weights=fractions)
    block_fold = balance(counts, foreground, num_folds, seed)
    return Plan(pool, boxes, rows, cols, blocks, block_fold[blocks], fractions, num_folds, buffer, source)


def random_plan(dataset, pool: np.ndarray, folds: np.ndarray, num_folds: int,
                grid_pattern: str = "") -> Plan:
    """Where the pool's tiles lie, held out by random `folds` (one per pool row), for the fold
    map: each tile its own block, no buffer."""
    boxes, rows, cols, source = _positions(dataset, pool, grid_pattern)
    return Plan(pool, boxes, rows, cols, np.arange(len(pool)), folds,
                dataset.foreground_fractions(pool), num_folds, 0, source)


def _positions(dataset, pool: np.ndarray, grid_pattern: str):
    """(boxes, rows, cols, source) of the pool's tiles, as :class:`Plan` holds them."""
    boxes, source = tile_boxes([dataset.samples[i] for i in pool], grid_pattern)
    cells = tile_cells(boxes)
    return boxes, cells[:, 0], cells[:, 1], source


def fold_map(rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> list[str]:
    """The grid as text, one line per row: each cell its tile's label character, '.' if empty."""
    grid = np.full((rows.max() + 1, cols.max() + 1), ".")
    grid[rows, cols] = labels
    return ["".join(line) for line in grid]


def save_png(path, rows: np.ndarray, cols: np.ndarray, folds: np.ndarray, num_folds: int,
             title: str) -> None:
    """The fold map as an image: one colour per fold, white where there is no tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = folds
    colours = plt.get_cmap("tab10" if num_folds <= 10 else "tab20").colors[:num_folds]
    height, width = grid.shape
    scale = 8.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(3.0, width * scale) + 1.6, max(2.0, height * scale) + 0.8))
    ax.imshow(grid, cmap=ListedColormap(colours), vmin=-0.5, vmax=num_folds - 0.5,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column (tiles)")
    ax.set_ylabel("row (tiles)")
    ax.legend(handles=[Patch(color=colours[k], label=f"fold {k}") for k in range(num_folds)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
