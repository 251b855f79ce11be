"""A labelled dataset on disk: its splits, its image/mask pairs, and its tiles in memory.

Layouts understood (the root is only ever read):

    ROOT/{train,val,test}/images/*.tif + masks/*.tif     (also validation/, *_partition/)
    ROOT/images/*.tif + ROOT/masks/*.tif                  (one split, called "train")
    ROOT/{train,val,test}.csv                             (tile lists, which then define the
                                                           splits: a header naming `image` and
                                                           `mask` columns, paths relative to
                                                           the CSV)

Images and masks pair by :func:`jaxswin.data.io.tile_id`: Image_X / Mask_X, ImageT_X / MaskT_X
or the same file name in both folders. An image without a mask is an error; files that are not
tiles, and masks without an image, are skipped with one warning line.

A split folder with images/ and no masks/ is an unlabelled split, as the challenge's test/ is:
its tiles are counted in :attr:`Dataset.unlabelled` and otherwise left alone (predict them with
``jaxswin.predict --input ROOT/test/images``). A labelled split of another name (dev/) is
listed, but no fold uses it: one warning line names it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxswin.data import bands, io, synthetic
from jaxswin.data.normalize import percentile_scale
from jaxswin.errors import ConfigError, DataError

_SPLIT_NAMES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
_SPLIT_ORDER = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path
    split: str


class Dataset:
    """The labelled tiles of a dataset root, in a fixed order (split, then file name).

    `samples[i]` is row i of the arrays from :meth:`load`; `channels` is the files' band order.
    """

    def __init__(
        self,
        root: Path,
        channels: tuple[str, ...],
        samples: list[Sample],
        size: int,
        resize: bool = False,
        unlabelled: dict[str, int] | None = None,
    ):
        self.root = root
        self.channels = channels
        self.samples = tuple(samples)
        self.size = size
        self.resize = resize  # tiles of another size are resized to `size` (else an error)
        self.unlabelled = dict(unlabelled or {})  # split -> tiles without masks, left aside
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(self.indices(name))}" for name in self.splits)
        aside = "".join(f", {name}={n} unlabelled" for name, n in self.unlabelled.items())
        return f"Dataset({self.root}, {counts}{aside})"

    def describe_unlabelled(self) -> str:
        """One line on the unlabelled tiles left aside ("" if there are none)."""
        if not self.unlabelled:
            return ""
        where = ", ".join(f"{n} in {name}/" for name, n in self.unlabelled.items())
        return (f"left aside {sum(self.unlabelled.values())} unlabelled tiles ({where}: images/ "
                "without masks/); predict them with jaxswin.predict --input")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.split for s in self.samples))

    def indices(self, *splits: str) -> np.ndarray:
        """Rows of the samples in the given splits."""
        return np.array([i for i, s in enumerate(self.samples) if s.split in splits], np.int64)

    def foreground_fractions(self, rows: np.ndarray) -> np.ndarray:
        """The landslide fraction of each tile in `rows`, from its mask alone at its own size
        (the images are not read, whatever size the tiles are)."""
        return np.array([io.read_mask(self.samples[i].mask, None).mean() for i in rows])

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 (N, H, W, 7) canonical order, percentile-scaled; masks uint8 (N, H, W)).

        Decoded once, then kept in memory. With `resize`, a tile of another size is scaled on
        its own pixels, then resized (bilinear; its mask nearest-neighbour).
        """
        if self._arrays is None:
            n, size = len(self.samples), self.size
            images = np.empty((n, size, size, len(bands.CHANNELS)), np.float32)
            masks = np.empty((n, size, size), np.uint8)
            crs_counts: dict[str, int] = {}
            for i, sample in enumerate(self.samples):
                images[i], masks[i], crs = self._load_sample(sample)
                crs_counts[crs] = crs_counts.get(crs, 0) + 1
            if len(crs_counts) > 1:
                # Tiles are independent samples and the model never sees coordinates, so mixed
                # CRSs do not change training; they often mean mixed sources, hence the warning.
                listing = ", ".join(f"{crs} ({count})" for crs, count in crs_counts.items())
                io.log.warning(
                    "%s: the tiles use %d different CRSs (tiles per CRS: %s); each tile is used "
                    "on its own, so training is unaffected, but check the data are one product",
                    self.root, len(crs_counts), listing,
                )
            self._arrays = images, masks
        return self._arrays

    def _load_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, str]:
        """A tile (scaled, `size` x `size`), its mask, and the name of its CRS."""
        expected = None if self.resize else self.size
        image, georef = io.read_image(sample.image, self.channels, expected)
        mask = io.read_mask(sample.mask, expected)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{sample.mask}: mask is {mask.shape[0]}x{mask.shape[1]} pixels but its image "
                f"{sample.image.name} is {image.shape[0]}x{image.shape[1]}; they must match"
            )
        image = percentile_scale(image)
        if image.shape[:2] != (self.size, self.size):
            image, mask = io.resize(image, self.size), io.resize(mask, self.size, nearest=True)
        crs = georef["crs"]
        return image, mask, crs.to_string() if crs else "no CRS"


def _split_name(source: Path) -> str:
    name = (source.stem if source.is_file() else source.name).lower().removesuffix("_partition")
    return _SPLIT_NAMES.get(name, name)


def _pairs_from_csv(table: Path) -> list[tuple[Path, Path]]:
    try:
        with table.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in reader.fieldnames or ()}
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{table}: not a readable CSV tile list ({err})") from None
    image_col = next((header[h] for h in header if h.startswith("image")), None)
    mask_col = next((header[h] for h in header if h.startswith("mask")), None)
    if image_col is None or mask_col is None:
        raise DataError(f"{table}: a tile list needs a header with 'image' and 'mask' columns")
    pairs = []
    for line, row in enumerate(rows, start=2):
        image, mask = (row.get(image_col) or "").strip(), (row.get(mask_col) or "").strip()
        if not image or not mask:
            raise DataError(f"{table}, line {line}: needs both an image and a mask path")
        pairs.append((table.parent / image, table.parent / mask))
    return pairs


def _pairs_from_folders(folder: Path, skipped: list[Path]) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    masks: dict[str, Path] = {}
    folders: dict[str, Path] = {}  # folders named like masks, reported if their image asks
    for path in sorted(masks_dir.iterdir()):
        if not io.is_tile(path):
            skipped.append(path)
            if path.is_dir():
                folders[io.tile_id(path)] = path
        elif masks.setdefault(tid := io.tile_id(path), path) != path:
            raise DataError(f"{path}: a second mask for tile '{tid}' (first: {masks[tid]})")
    pairs, used = [], set()
    for path in sorted(images_dir.iterdir()):
        if not io.is_tile(path):
            skipped.append(path)
            continue
        tid = io.tile_id(path)
        if tid in used:
            raise DataError(f"{path}: a second image for tile '{tid}'")
        if tid not in masks and tid in folders:
            raise DataError(f"{folders[tid]}: a folder, where the mask of tile '{tid}' should be")
        if tid not in masks:
            raise DataError(
                f"{path}: no mask for tile '{tid}' in {masks_dir} (expected Mask_{tid}.tif, "
                f"MaskT_{tid}.tif or {path.name})"
            )
        used.add(tid)
        pairs.append((path, masks[tid]))
    skipped.extend(p for tid, p in masks.items() if tid not in used)
    return pairs


def scan(
    root: str | Path, channels: tuple[str, ...], size: int = 128, resize: bool = False
) -> Dataset:
    """The dataset under `root` (see the module docstring for the layouts); `resize` as in
    :class:`Dataset`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    tables = sorted(root.glob("*.csv"))
    if tables:  # the lists define the splits; folders are just where the files live
        sources = [(_split_name(p), p) for p in tables]
    elif (root / "images").is_dir():
        sources = [("train", root)]
    else:
        sources = [(_split_name(p), p) for p in sorted(root.iterdir()) if (p / "images").is_dir()]
    known = {name: i for i, name in enumerate(_SPLIT_ORDER)}
    sources.sort(key=lambda source: (known.get(source[0], len(known)), source[0]))
    samples: list[Sample] = []
    skipped: list[Path] = []
    unlabelled: dict[str, int] = {}
    for split, source in sources:
        if source.is_dir() and not (source / "masks").is_dir():
            unlabelled[split] = sum(io.is_tile(p) for p in (source / "images").iterdir())
            continue
        if source.is_file():
            pairs = _pairs_from_csv(source)
        else:
            pairs = _pairs_from_folders(source, skipped)
        for image, mask in pairs:
            for path in (image, mask):
                if not path.is_file():
                    raise DataError(f"{path}: listed in {source}, but no such file")
            samples.append(Sample(io.tile_id(image), image, mask, split))
    io.warn_skipped(skipped, "not a .tif tile, or a mask without its image")
    _warn_unused_splits(root, samples)
    if not samples:
        aside = "".join(f"; {source} has {unlabelled[split]} images but no masks/ folder"
                        for split, source in sources if split in unlabelled)
        raise DataError(
            f"{root}: no labelled tiles found (expected train/images/*.tif with train/masks/*.tif, "
            f"or the same under val/, test/ or *_partition/{aside})"
        )
    return Dataset(root, channels, samples, size, resize, unlabelled)


def _warn_unused_splits(root: Path, samples: list[Sample]) -> None:
    """One warning line naming the labelled splits no run uses (a dev/ beside train/, say)."""
    counts: dict[str, int] = {}
    for sample in samples:
        if sample.split not in _SPLIT_ORDER:
            counts[sample.split] = counts.get(sample.split, 0) + 1
    if counts:
        listing = ", ".join(f"{split} ({count} tiles)" for split, count in counts.items())
        io.log.warning(
            "%s: labelled split(s) %s left unused: the folds pool train and val, and test stays "
            "held out; rename a split to train or val to train on its tiles", root, listing,
        )


def cache_dir() -> Path:
    return Path(os.environ.get("JAXSWIN_CACHE") or Path.home() / ".cache" / "jaxswin")


def open_dataset(
    root: str | None, channels_spec: str, size: int = 128, resize: bool = False
) -> Dataset:
    """The dataset at `root` with bands `channels_spec` (``--data``, ``--bands``), its tiles
    `size` pixels square (`resize`: resized to it, else another size is an error).

    `root` None or "" is the embedded synthetic dataset, generated on first use under
    $JAXSWIN_CACHE (default ~/.cache/jaxswin); its files are in pbvs2026 band order, its tiles
    synthetic.SIZE pixels square (`size` and `resize` apply to them as to any data).
    """
    channels = bands.resolve(channels_spec)
    if not root:
        if channels != bands.PROFILES["pbvs2026"]:
            raise ConfigError(
                f"--bands {channels_spec}: the synthetic dataset (no --data given) is stored in "
                "pbvs2026 band order; use --bands pbvs2026 or pass --data"
            )
        root = synthetic.ensure(cache_dir())
    return scan(root, channels, size, resize)
