"""Hostile inputs, tried systematically (issue 14 part 5): one table of bad and unusual inputs,
each with its expected outcome.

- "works" cases load the dataset through the data path the training uses (open_dataset + load)
  and check what comes out; one end-to-end case trains, predicts and scores on a dataset that
  piles up most of the unusual-but-valid inputs at once (python -m, a real process).
- "error" cases run the real command-line entry point (jaxswin.train / predict / evaluate main)
  and expect a non-zero exit with one `error:` line naming the file or option and the fix,
  and no traceback. Data errors surface while the tiles load, before any model is built.

Every case snapshots the dataset's files and mtimes before and after: nothing may be written
under it. The README's "Hostile inputs" table lists the same cases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
import tifffile

from jaxswin import config as config_lib
from jaxswin import evaluate, predict, train
from jaxswin.errors import ConfigError
from jaxswin.data import io, open_dataset
from test_data_io import TRANSFORM, write_geotiff

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32  # tile side of these datasets; error cases set model.img_size to it
MARS = "IAU_2015:49900"  # a Mars equirectangular CRS (the MMLS tiles use IAU Mars CRSs)
MARS_POLAR = "IAU_2015:49910"
TRAIN_ARGS = ["--fold", "0", "--preset", "tiny", "--set", f"model.img_size={SIZE}",
              "--set", "data.num_folds=2", "--set", "data.workers=0"]


# ----------------------------------------------------------------------------- datasets


def tile_values(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A 7-band image (C, H, W) of integers 0..249 (they fit every integer type) as float32,
    and its 0/1 mask (1, H, W)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 250, (7, size, size)).astype(np.float32)
    mask = np.zeros((1, size, size), np.uint8)
    mask[0, size // 4 : size // 2, size // 4 :] = 1  # some landslide in every tile
    return image, mask


def write_tile(root: Path, tid: int, *, size: int = SIZE, dtype=np.float32, mask_scale: int = 1,
               mask_dtype=np.uint8, crs: str = MARS, split: str = "train") -> None:
    image, mask = tile_values(tid, size)
    if np.issubdtype(dtype, np.signedinteger):
        image = image - 500  # int16 tiles carry negative values (e.g. a DEM below datum)
    write_geotiff(root / split / "images" / f"Image_{tid}.tif", image.astype(dtype), crs=crs)
    write_geotiff(root / split / "masks" / f"Mask_{tid}.tif",
                  mask.astype(mask_dtype) * mask_dtype(mask_scale), crs=crs)


def valid_dataset(root: Path, count: int = 4, **kwargs) -> Path:
    for tid in range(count):
        write_tile(root, tid, **kwargs)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root (files and folders) with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def replace_file(path: Path, content: bytes) -> None:
    path.unlink()
    path.write_bytes(content)


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    # Builds the inputs under the case's folder; returns the dataset (or input) folder.
    build: Callable[[Path], Path]
    # "load": open_dataset(...).load() must work, then `check(images, masks, dataset)` holds.
    # "train" / "predict" / "evaluate": that CLI, argv from `args(data, tmp)`, must fail with
    # one error line holding every string of `expect` (the data's path stands for {data}).
    action: str
    args: Callable[[Path, Path], list[str]] | None = None
    expect: tuple[str, ...] = ()
    check: Callable | None = None
    resize: bool = False
    skip: str | None = None


def same_as_float32(images, masks, dataset):
    """The tiles load as the same values stored as float32 do (P1-P99 scaling ignores the
    int16 tiles' offset)."""
    reference = open_dataset(str(valid_dataset(dataset.root.parent / "f32")), "pbvs2026", SIZE)
    np.testing.assert_allclose(images, reference.load()[0], atol=1e-6)
    np.testing.assert_array_equal(masks, reference.load()[1])


def masks_match_reference(images, masks, dataset):
    np.testing.assert_array_equal(masks, np.stack([tile_values(t)[1][0] for t in range(4)]))


def scaled_tiles(images, masks, dataset):
    assert images.shape == (len(dataset), SIZE, SIZE, 7) and masks.shape == images.shape[:3]
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) <= {0, 1}


def build_nodata_mask(root: Path) -> Path:
    valid_dataset(root, 3)
    image, mask = tile_values(3)
    mask = mask.astype(np.uint8)
    mask[0, :4] = 255  # a collar of nodata, itself positive: it must not count as landslide
    write_geotiff(root / "train" / "images" / "Image_3.tif", image)
    write_geotiff(root / "train" / "masks" / "Mask_3.tif", mask, nodata=255)
    return root


def check_nodata_mask(images, masks, dataset):
    expected = tile_values(3)[1][0].copy()
    expected[:4] = 0
    np.testing.assert_array_equal(masks[3], expected)


def build_nodata_image(root: Path) -> Path:
    valid_dataset(root, 3)
    image, mask = tile_values(3)
    image[:, :5, :] = -9999  # a nodata collar
    write_geotiff(root / "train" / "images" / "Image_3.tif", image, nodata=-9999)
    write_geotiff(root / "train" / "masks" / "Mask_3.tif", mask)
    return root


def check_nodata_image(images, masks, dataset):
    scaled_tiles(images, masks, dataset)
    assert (images[3, :5] == 0).all()  # nodata pixels sit at the band's low end
    assert images[3, 5:].max() == 1.0  # the collar did not stretch the P1-P99 range


def build_mixed_sizes(root: Path) -> Path:
    valid_dataset(root, 2)
    write_tile(root, 2, size=48)
    write_tile(root, 3, size=20)
    return root


def check_resized(images, masks, dataset):
    scaled_tiles(images, masks, dataset)
    # The resized masks keep the reference's landslide block, scaled to the common size.
    for row, side in ((2, 48), (3, 20)):
        expected = io.resize(tile_values(row, side)[1][0], SIZE, nearest=True)
        np.testing.assert_array_equal(masks[row], expected)


def build_mixed_crs(root: Path) -> Path:
    valid_dataset(root, 2)
    write_tile(root, 2, crs=MARS_POLAR)
    write_tile(root, 3, crs="EPSG:4326")
    return root


def check_crs_warning(images, masks, dataset, messages=()):
    scaled_tiles(images, masks, dataset)
    assert any("3 different CRSs" in m for m in messages), messages


def make_read_only(root: Path) -> Path:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return root


def build_junk(root: Path) -> Path:
    valid_dataset(root)
    (root / "train" / "images" / "Image_9.tif").mkdir()  # a folder named like a tile
    (root / "train" / "images" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "train" / "masks" / "Mask_0.tif.aux.xml").write_text("<PAMDataset/>")
    (root / "README.txt").write_text("notes")
    return root


def build_tifffile_stack(root: Path) -> Path:
    valid_dataset(root, 3)
    image, mask = tile_values(3)
    tifffile.imwrite(root / "train" / "images" / "Image_3.tif", np.moveaxis(image, 0, -1))
    write_geotiff(root / "train" / "masks" / "Mask_3.tif", mask)
    return root


def with_file(name: str, content: bytes | None = None, mode: int | None = None,
              count: int = 4) -> Callable[[Path], Path]:
    """A valid dataset whose file `name` (relative to train/) is replaced or changed."""
    def build(root: Path) -> Path:
        valid_dataset(root, count)
        path = root / "train" / name
        if content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                path.unlink()
            path.write_bytes(content)
        if mode is not None:
            path.chmod(mode)
        return root
    return build


def with_array(name: str, array: np.ndarray, **kwargs) -> Callable[[Path], Path]:
    """A valid dataset whose file `name` (relative to train/) holds `array` (C, H, W)."""
    def build(root: Path) -> Path:
        valid_dataset(root)
        write_geotiff(root / "train" / name, array, **kwargs)
        return root
    return build


def build_second_mask(root: Path) -> Path:
    valid_dataset(root)
    write_geotiff(root / "train" / "masks" / "2.tif", tile_values(2)[1])
    return root


def build_mask_folder(root: Path) -> Path:
    valid_dataset(root)
    (root / "train" / "masks" / "Mask_2.tif").unlink()
    (root / "train" / "masks" / "Mask_2.tif").mkdir()
    return root


def build_dangling_mask(root: Path) -> Path:
    valid_dataset(root)
    (root / "train" / "masks" / "Mask_2.tif").unlink()
    (root / "train" / "masks" / "Mask_2.tif").symlink_to(root / "elsewhere" / "Mask_2.tif")
    return root


def build_missing_mask(root: Path) -> Path:
    valid_dataset(root)
    (root / "train" / "masks" / "Mask_1.tif").unlink()
    return root


def build_no_masks_folder(root: Path) -> Path:
    valid_dataset(root)
    for path in (root / "train" / "masks").iterdir():
        path.unlink()
    (root / "train" / "masks").rmdir()
    return root


def build_empty(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("nothing here yet")
    return root


def build_csv_missing(root: Path) -> Path:
    valid_dataset(root)
    (root / "train.csv").write_text(
        "image,mask\ntrain/images/Image_0.tif,train/masks/Mask_0.tif\n"
        "train/images/Image_7.tif,train/masks/Mask_7.tif\n"
    )
    return root


def build_all_background(root: Path) -> Path:
    valid_dataset(root)
    for tid in range(4):
        write_geotiff(root / "train" / "masks" / f"Mask_{tid}.tif",
                      np.zeros((1, SIZE, SIZE), np.uint8))
    return root


def build_config_file(text: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        valid_dataset(root)
        (root.parent / "my run.toml").write_text(text)
        return root
    return build


def build_binary_config_file(root: Path) -> Path:
    valid_dataset(root)
    (root.parent / "my run.toml").write_bytes(bytes(range(256)))
    return root


def with_saved_config(make: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A valid dataset beside a run folder whose fold0/config.toml `make(path)` creates."""
    def build(root: Path) -> Path:
        valid_dataset(root)
        saved = root.parent / "run" / "fold0" / "config.toml"
        saved.parent.mkdir(parents=True)
        make(saved)
        return root
    return build


def set_case(name: str, setting: str, *expect: str) -> Case:
    """jaxswin.train on a valid dataset with `--set setting`, which must fail."""
    return Case(name, valid_dataset, "train", train_args("--set", setting), expect)


def train_args(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda data, tmp: [*TRAIN_ARGS, "--data", str(data), "--workdir", str(tmp / "run"),
                              *extra]


def config_file_args(data: Path, tmp: Path) -> list[str]:
    return [*train_args()(data, tmp), "--preset", str(tmp / "my run.toml")]


def build_predictions(root: Path, *, extra: int = 0, size: int = SIZE, empty: bool = False) -> Path:
    """root/masks (ground truth) and root/pred (predictions) of 3 tiles (+ `extra` predictions)."""
    for tid in range(3 + extra):
        mask = tile_values(tid)[1]
        if tid < 3:
            write_geotiff(root / "masks" / f"Mask_{tid}.tif", mask)
        write_geotiff(root / "pred" / f"Image_{tid}.tif", tile_values(tid, size)[1])
    if empty:
        replace_file(root / "pred" / "Image_1.tif", b"")
    return root


def with_predictions(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    """build_predictions' folders whose file `name` (relative to them) holds `array` (C, H, W)."""
    def build(root: Path) -> Path:
        build_predictions(root)
        (root / name).unlink()
        write_geotiff(root / name, array)
        return root
    return build


def evaluate_args(data: Path, tmp: Path) -> list[str]:
    return ["--pred", str(data / "pred"), "--masks", str(data / "masks")]


def predict_args(*extra: str, checkpoint: str = "run") -> Callable[[Path, Path], list[str]]:
    return lambda data, tmp: ["--checkpoint", str(tmp / checkpoint), "--input",
                              str(data / "train" / "images"), "--output", str(tmp / "out"),
                              *extra]


def build_with_run_folder(root: Path) -> Path:
    valid_dataset(root)
    (root.parent / "run").mkdir()
    return root


def with_output_in_the_way(taken: str, folder: bool = False) -> Callable[[Path], Path]:
    """A valid dataset, and beside it a file (or folder) where predict wants the other kind."""
    def build(root: Path) -> Path:
        valid_dataset(root)
        path = root.parent / taken
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if folder else path.write_text("a file of the user's")
        return root
    return build


def build_same_stem(root: Path) -> Path:
    valid_dataset(root)
    images = root / "train" / "images"
    (images / "Image_1.tiff").write_bytes((images / "Image_1.tif").read_bytes())
    return root


ROOT_USER = "running as root: permissions do not stop root from reading"

CASES = [
    # --- pixel types, masks and nodata: these load -------------------------------------------
    Case("image uint8", lambda r: valid_dataset(r, dtype=np.uint8), "load",
         check=same_as_float32),
    Case("image uint16", lambda r: valid_dataset(r, dtype=np.uint16), "load",
         check=same_as_float32),
    Case("image int16 (negative values)", lambda r: valid_dataset(r, dtype=np.int16), "load",
         check=same_as_float32),
    Case("image float64", lambda r: valid_dataset(r, dtype=np.float64), "load",
         check=same_as_float32),
    Case("mask stored as 0/255", lambda r: valid_dataset(r, mask_scale=255), "load",
         check=masks_match_reference),
    Case("mask stored as uint16 0/1000", lambda r: valid_dataset(
        r, mask_scale=1000, mask_dtype=np.uint16), "load", check=masks_match_reference),
    Case("mask with a nodata value", build_nodata_mask, "load", check=check_nodata_mask),
    Case("mask coded 1 background, 2 landslide", with_array(
        "masks/Mask_1.tif", tile_values(1)[1] + 1), "train", train_args(),
         ("Mask_1.tif", "mask values 1, 2;", "recode it (background 0, landslide")),
    Case("mask of soft labels", with_array(
        "masks/Mask_1.tif", tile_values(1)[1] * np.float32(0.8)), "train", train_args(),
         ("Mask_1.tif", "mask values 0, 0.8;", "recode it")),
    Case("mask with a NaN pixel", with_array("masks/Mask_1.tif", np.where(
        np.arange(SIZE) == 3, np.nan, tile_values(1)[1]).astype(np.float32)), "train",
         train_args(), ("Mask_1.tif", "mask values 0, 1, nan;", "nodata")),
    Case("image with a nodata collar", build_nodata_image, "load", check=check_nodata_image),
    Case("tifffile stack (H, W, C)", build_tifffile_stack, "load", check=scaled_tiles),
    # --- sizes ---------------------------------------------------------------------------------
    Case("tiles larger than the model's, data.resize", lambda r: valid_dataset(r, size=48),
         "load", check=scaled_tiles, resize=True),
    Case("tiles smaller than the model's, data.resize", lambda r: valid_dataset(r, size=20),
         "load", check=scaled_tiles, resize=True),
    Case("mixed sizes in one folder, data.resize", build_mixed_sizes, "load",
         check=check_resized, resize=True),
    Case("tiles larger than the model's", lambda r: valid_dataset(r, size=48), "train",
         train_args(), ("Image_0.tif", "48x48", f"{SIZE}x{SIZE}", "data.resize=true")),
    Case("tiles smaller than the model's", lambda r: valid_dataset(r, size=20), "train",
         train_args(), ("Image_0.tif", "20x20", "data.resize=true")),
    Case("mixed sizes in one folder", build_mixed_sizes, "train", train_args(),
         ("Image_2.tif", "48x48", "data.resize=true")),
    Case("synthetic tiles (no --data) of another size than the model's", valid_dataset,
         "train", lambda d, t: [*TRAIN_ARGS, "--workdir", str(t / "run")],
         ("synthetic", "tile is 128x128", f"expected {SIZE}x{SIZE}", "data.resize=true")),
    Case("mask of another size than its image", with_array(
        "masks/Mask_1.tif", np.ones((1, 16, 16), np.uint8)), "train",
         train_args("--set", "data.resize=true"),
         ("Mask_1.tif", "16x16", "Image_1.tif", "must match")),
    # --- layout --------------------------------------------------------------------------------
    Case("differing CRSs within one dataset (warning)", build_mixed_crs, "load",
         check=check_crs_warning),
    Case("non-ASCII and spaces in the path", lambda r: valid_dataset(
        r.parent / "Jezero Krater – Küste" / "mes données"), "load", check=scaled_tiles),
    Case("read-only dataset", lambda r: make_read_only(valid_dataset(r)), "load",
         check=scaled_tiles),
    Case("folder named like a tile, junk files (skipped)", build_junk, "load", check=scaled_tiles),
    Case("a second mask for one tile", build_second_mask, "train", train_args(),
         ("2.tif", "second mask", "Mask_2.tif")),
    Case("folder named like a mask", build_mask_folder, "train", train_args(),
         ("Mask_2.tif", "a folder")),
    Case("mask is a dangling link", build_dangling_mask, "train", train_args(),
         ("Image_2.tif", "no mask for tile '2'")),
    Case("image without its mask", build_missing_mask, "train", train_args(),
         ("Image_1.tif", "no mask for tile '1'", "Mask_1.tif")),
    Case("images/ without masks/", build_no_masks_folder, "train", train_args(),
         ("train", "no masks/ folder")),
    Case("no tiles at all", build_empty, "train", train_args(), ("no labelled tiles",)),
    Case("CSV list naming a missing file", build_csv_missing, "train", train_args(),
         ("Image_7.tif", "train.csv", "no such file")),
    Case("masks without any landslide", build_all_background, "train", train_args(),
         ("no landslide pixels", "check the masks")),
    # --- damaged files -------------------------------------------------------------------------
    Case("zero-byte image", with_file("images/Image_2.tif", b""), "train", train_args(),
         ("Image_2.tif", "empty file (0 bytes)")),
    Case("zero-byte mask", with_file("masks/Mask_3.tif", b""), "train", train_args(),
         ("Mask_3.tif", "empty file (0 bytes)")),
    Case("truncated image", lambda r: truncate(with_file("images/Image_1.tif")(r)), "train",
         train_args(), ("Image_1.tif", "truncated or corrupt")),
    Case("not a TIFF at all", with_file("images/Image_1.tif", b"PK\x03\x04 a zip file" * 20),
         "train", train_args(), ("Image_1.tif", "not a readable GeoTIFF")),
    Case("unreadable file (no permission)", with_file("images/Image_1.tif", mode=0o000), "train",
         train_args(), ("Image_1.tif", "permission denied", "chmod"),
         skip=ROOT_USER if os.geteuid() == 0 else None),
    Case("image with 4 bands", with_array("images/Image_1.tif", np.ones((4, SIZE, SIZE),
         np.float32)), "train", train_args(), ("Image_1.tif", "4 band(s)", "stack all seven")),
    Case("image with 8 bands, no band check", with_array("images/Image_1.tif", np.ones(
        (8, SIZE, SIZE), np.float32)), "train", train_args("--band-check", "off"),
         ("Image_1.tif", "8 band(s)", "stack all seven")),
    Case("mask with 3 bands", with_array("masks/Mask_1.tif", np.ones((3, SIZE, SIZE), np.uint8)),
         "train", train_args(), ("Mask_1.tif", "one band")),
    Case("complex pixels", with_array("images/Image_1.tif", np.ones((7, SIZE, SIZE),
         np.complex64)), "train", train_args(), ("Image_1.tif", "not a real number type")),
    # --- command line and config: jaxswin.train -----------------------------------------------
    Case("--data folder missing", valid_dataset, "train",
         lambda d, t: [*TRAIN_ARGS, "--data", str(d / "nope"), "--workdir", str(t / "run")],
         ("--data", "nope", "no such directory")),
    Case("--workdir inside the dataset", valid_dataset, "train",
         lambda d, t: [*TRAIN_ARGS, "--data", str(d), "--workdir", str(d / "train" / "runs")],
         ("--workdir", "inside the dataset", "outside it")),
    Case("--fold out of range", valid_dataset, "train", train_args("--fold", "7"),
         ("--fold 7", "0..1")),
    Case("--fold not a number", valid_dataset, "train", train_args("--fold", "first"),
         ("--fold first", "'all' or 'official'")),
    Case("--fold official without a val split", valid_dataset, "train",
         train_args("--fold", "official"), ("--fold official", "validation split")),
    Case("unknown preset", valid_dataset, "train", train_args("--preset", "tinny"),
         ("unknown preset 'tinny'", "tiny")),
    set_case("--set without '='", "train.lr", "--set train.lr", "section.key=value"),
    set_case("--set unknown key", "train.lrate=1e-3", "unknown key 'lrate'", "did you mean 'lr'"),
    set_case("--set unknown section", "trian.lr=1e-3",
             "unknown section [trian]", "did you mean 'train'"),
    set_case("--set wrong type", 'train.epochs="ten"', "'epochs' must be an integer", "ten"),
    set_case("negative learning rate", "train.lr=-1e-3",
             "train.lr = -0.001", "out of range", "(0, inf)"),
    set_case("batch size 0", "train.batch_size=0", "train.batch_size = 0", "[1, inf)"),
    set_case("dropout 1.5", "model.dropout=1.5", "model.dropout = 1.5", "[0, 1)"),
    set_case("threshold outside (0, 1)",
             "predict.threshold=1.2", "predict.threshold = 1.2", "(0, 1)"),
    set_case("unknown fusion", "model.fusion=sum",
             "model.fusion = 'sum'", "concat, weighted_sum, weighted_sum_fixed, eca, se, cbam"),
    set_case("unknown decoder", "model.decoder=unet", "model.decoder = 'unet'", "unetpp"),
    set_case("unknown loss", "train.loss=bce_dic",
             "train.loss = 'bce_dic'", "did you mean 'bce_dice'"),
    set_case("unknown tta", "predict.tta=rot8",
             "predict.tta = 'rot8'", "none, hflip, vflip, flip2, rot4, d4"),
    set_case("unknown precision", "train.precision=fp8",
             "train.precision = 'fp8'", "auto, fp32, bf16, fp16"),
    Case("unknown band profile", valid_dataset, "train", train_args("--bands", "mmlsv3"),
         ("--bands mmlsv3", "pbvs2026")),
    Case("--distributed outside a cluster", valid_dataset, "train", train_args("--distributed"),
         ("--distributed", "cannot join", "--coordinator-address")),
    Case("--process-id out of range", valid_dataset, "train", train_args(
        "--coordinator-address", "localhost:1", "--num-processes", "2", "--process-id", "5"),
         ("--process-id 5", "0..1")),
    Case("--process-id alone", valid_dataset, "train", train_args("--process-id", "1"),
         ("--coordinator-address", "--num-processes", "together")),
    Case("config file: unknown key", build_config_file(
        'base = "tiny"\n[train]\nepoch = 3\n'), "train", config_file_args,
         ("my run.toml", "unknown key 'epoch'", "did you mean 'epochs'")),
    Case("config file: wrong type", build_config_file('base = "tiny"\n[train]\nlr = "fast"\n'),
         "train", config_file_args, ("my run.toml", "'lr' must be a number")),
    Case("config file: out of range", build_config_file(
        'base = "tiny"\n[train]\nema_decay = 1.0\n'), "train", config_file_args,
         ("train.ema_decay = 1.0", "(0, 1)")),
    Case("config file: not TOML", build_config_file("[train\nlr = 1\n"), "train",
         config_file_args, ("my run.toml", "not valid TOML")),
    Case("config file: binary", build_binary_config_file, "train", config_file_args,
         ("my run.toml", "not a text file", "TOML file")),
    Case("config file: a folder", valid_dataset, "train",
         lambda d, t: [*train_args()(d, t), "--preset", str(t)], ("it is a folder", "preset name")),
    Case("config file: base not a string", build_config_file("base = 5\n"), "train",
         config_file_args, ("my run.toml", "'base' must be a preset name", "got 5")),
    Case("run folder: saved config.toml binary", with_saved_config(
        lambda saved: saved.write_bytes(b"\xff\xfe\x00 not text")), "train", train_args(),
         ("fold0/config.toml", "not a text file", "--workdir")),
    Case("run folder: saved config.toml a folder", with_saved_config(Path.mkdir), "train",
         train_args(), ("fold0/config.toml", "it is a folder", "--workdir")),
    # --- jaxswin.predict -----------------------------------------------------------------------
    Case("predict: --checkpoint missing", valid_dataset, "predict", predict_args(),
         ("--checkpoint", "run", "no such folder")),
    Case("predict: --checkpoint without a model", build_with_run_folder, "predict",
         predict_args(), ("--checkpoint", "no trained model here", "best/")),
    Case("predict: --input missing", valid_dataset, "predict",
         lambda d, t: ["--checkpoint", str(t), "--input", str(d / "nope"),
                       "--output", str(t / "out")],
         ("--input", "nope", "no such file or folder")),
    Case("predict: --output inside --input", valid_dataset, "predict",
         lambda d, t: ["--checkpoint", str(t), "--input", str(d / "train" / "images"),
                       "--output", str(d / "train" / "images" / "out")],
         ("--output", "inside --input", "separate folder")),
    Case("predict: --input without tiles", build_empty, "predict",
         lambda d, t: ["--checkpoint", str(t), "--input", str(d), "--output", str(t / "out")],
         ("data", "no .tif/.tiff tiles")),
    Case("predict: --output is a file", with_output_in_the_way("out"), "predict",
         predict_args(), ("--output", "out is a file", "choose another --output")),
    Case("predict: --output inside a file", with_output_in_the_way("taken"), "predict",
         lambda d, t: ["--checkpoint", str(t / "run"), "--input", str(d / "train" / "images"),
                       "--output", str(t / "taken" / "out")],
         ("--output", "taken is a file", "taken/out cannot be made")),
    Case("predict: --save-prob where out/prob is a file", with_output_in_the_way("out/prob"),
         "predict", predict_args("--save-prob"), ("--output", "prob is a file", "move the file")),
    Case("predict: an output file is a folder", with_output_in_the_way("out/Image_1.tif", True),
         "predict", predict_args("--overwrite"), ("Image_1.tif is a folder", "move it away")),
    Case("predict: t.tif and t.tiff share their polygons", build_same_stem, "predict",
         predict_args("--polygons"), ("Image_1.tif and", "Image_1.tiff", "Image_1.gpkg",
                                      "rename one")),
    Case("predict: --checkpoint a model.safetensors",
         with_output_in_the_way("run/best/model.safetensors"), "predict",
         predict_args(checkpoint="run/best/model.safetensors"),
         ("--checkpoint", "model.safetensors: is a file", "pass its folder", "run/best")),
    Case("predict: --masks missing", valid_dataset, "predict",
         lambda d, t: [*predict_args()(d, t), "--masks", str(t / "nope")],
         ("--masks", "nope: no such folder")),
    Case("predict: --min-area nan", valid_dataset, "predict", predict_args("--min-area", "nan"),
         ("--min-area nan", "at least 0")),
    Case("predict: --threshold 1.5", valid_dataset, "predict", predict_args("--threshold", "1.5"),
         ("--threshold 1.5", "[0, 1]")),
    Case("predict: --batch-size 0", valid_dataset, "predict", predict_args("--batch-size", "0"),
         ("--batch-size 0", "at least 1")),
    Case("predict: unknown --tta", valid_dataset, "predict", predict_args("--tta", "rot8"),
         ("--tta", "invalid choice: 'rot8'")),
    # --- jaxswin.evaluate ----------------------------------------------------------------------
    Case("evaluate: --pred missing", build_predictions, "evaluate",
         lambda d, t: ["--pred", str(d / "nope"), "--masks", str(d / "masks")],
         ("nope", "no such folder of tiles")),
    Case("evaluate: a prediction without its mask",
         lambda r: build_predictions(r, extra=1), "evaluate", evaluate_args,
         ("--masks", "no mask for 1 tile(s): 3")),
    Case("evaluate: zero-byte prediction", lambda r: build_predictions(r, empty=True),
         "evaluate", evaluate_args, ("Image_1.tif", "empty file (0 bytes)")),
    Case("evaluate: prediction of another size", lambda r: build_predictions(r, size=16),
         "evaluate", evaluate_args, ("Image_0.tif", "(16, 16)", f"({SIZE}, {SIZE})")),
    Case("evaluate: probabilities as predictions", with_predictions(
        "pred/Image_1.tif", np.arange(SIZE * SIZE, dtype=np.uint8).reshape(1, SIZE, SIZE) % 255),
         "evaluate", evaluate_args, ("Image_1.tif", "mask values 0, 1, 2,", "threshold")),
    Case("evaluate: ground truth coded 1/2", with_predictions(
        "masks/Mask_2.tif", tile_values(2)[1] + 1), "evaluate", evaluate_args,
         ("Mask_2.tif", "mask values 1, 2;", "recode it")),
]


def truncate(root: Path) -> Path:
    path = root / "train" / "images" / "Image_1.tif"
    replace_file(path, path.read_bytes()[: path.stat().st_size // 2])
    return root


MAINS = {"train": train.main, "predict": predict.main, "evaluate": evaluate.main}


def test_the_table_has_at_least_30_distinct_cases():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names) >= 30


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # The CLIs set the XLA cache under $JAXSWIN_CACHE: keep it out of the user's home.
    monkeypatch.setenv("JAXSWIN_CACHE", str(tmp_path / "cache"))


def restore_permissions(root: Path) -> None:
    """Lets pytest delete what a read-only or unreadable case left behind."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case, tmp_path, capsys, caplog):
    if case.skip:
        pytest.skip(case.skip)
    data = case.build(tmp_path / "data")
    before = snapshot(data)
    try:
        if case.action == "load":
            with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
                dataset = open_dataset(str(data), "pbvs2026", SIZE, resize=case.resize)
                images, masks = dataset.load()
            if case.check is check_crs_warning:
                case.check(images, masks, dataset, [r.getMessage() for r in caplog.records])
            else:
                case.check(images, masks, dataset)
        else:
            argv = case.args(data, tmp_path)
            with pytest.raises(SystemExit) as exit_info:
                MAINS[case.action](argv)
            err = capsys.readouterr().err
            assert exit_info.value.code not in (0, None), err
            assert "Traceback" not in err
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1, err
            for text in case.expect:
                assert text in errors[0], f"{text!r} not in {errors[0]!r}"
        assert snapshot(data) == before, "something was written under the dataset"
    finally:
        restore_permissions(tmp_path)


def test_start_that_failed_before_any_checkpoint_leaves_the_run_folder_open(tmp_path, capsys):
    """A bad option found after the run folder was opened (a batch larger than the tiles) must
    not refuse the corrected rerun as "a different configuration": nothing was trained."""
    data = valid_dataset(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        train.main(train_args("--set", "train.batch_size=1000")(data, tmp_path))
    assert exit_info.value.code == 2
    assert "train.batch_size=1000" in capsys.readouterr().err
    workdir, fold_dir = tmp_path / "run", tmp_path / "run" / "fold0"
    corrected = train.load_config(train.build_parser().parse_args(train_args()(data, tmp_path)))
    assert fold_dir.is_dir() and (fold_dir / "config.toml").read_text() != config_lib.to_toml(
        corrected)
    train.open_run(corrected, 0, workdir)
    assert "takes this one" in capsys.readouterr().err
    assert (fold_dir / "config.toml").read_text() == config_lib.to_toml(corrected)
    (fold_dir / "checkpoints" / "3").mkdir(parents=True)  # a run to resume: never mixed
    with pytest.raises(ConfigError, match="different configuration"):
        train.open_run(dataclasses.replace(corrected, name="other"), 0, workdir)


def test_training_says_each_data_warning_once(tmp_path, capsys):
    """The dataset is opened once per command: the band check and the fold share it."""
    data = valid_dataset(tmp_path / "data")
    write_tile(data, 9, split="dev")
    (data / "train" / "images" / "notes.txt").write_text("not a tile")
    with pytest.raises(SystemExit) as exit_info:  # stops on the batch, after the data is read
        train.main(train_args("--set", "train.batch_size=1000")(data, tmp_path))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "train.batch_size=1000" in err
    assert err.count("split(s) dev (1 tiles) left unused") == 1, err
    assert err.count("notes.txt") == 1, err


def test_resuming_with_other_pretrained_weights_is_refused_naming_both(tmp_path):
    """A resumed run continues from its checkpoint: another --pretrained would be ignored."""
    cfg, workdir = config_lib.load("tiny"), tmp_path / "run"
    first = tmp_path / "swinv2.safetensors"
    moved = tmp_path / "moved.safetensors"
    other = tmp_path / "other.safetensors"
    first.write_bytes(b"weights" * 100)
    moved.write_bytes(first.read_bytes())
    other.write_bytes(b"other weights")
    train.open_run(cfg, 0, workdir, str(first))
    (workdir / "fold0" / "checkpoints" / "3").mkdir(parents=True)
    train.open_run(cfg, 0, workdir, str(moved))  # the same weights under another name
    train.open_run(cfg, 0, workdir, None)  # the checkpoint holds the weights: none needed
    with pytest.raises(ConfigError) as error:
        train.open_run(cfg, 0, workdir, str(other))
    assert "moved.safetensors" in str(error.value) and "other.safetensors" in str(error.value)
    assert "--workdir" in str(error.value)
    # A run started from random weights does not take a file on resume either.
    train.open_run(cfg, 1, workdir, None)
    (workdir / "fold1" / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(ConfigError, match="random weights"):
        train.open_run(cfg, 1, workdir, str(first))


# ----------------------------------------------------------------------------- real processes


def run_module(module: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def hostile_but_valid(tmp_path_factory):
    """A read-only dataset under a path with spaces and non-ASCII letters, mixing pixel types,
    tile sizes, CRSs and mask encodings, with junk beside the tiles."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "Jezero Krater – Küste" / "mes données"
    for tid, (dtype, size, crs, scale) in enumerate([
        (np.uint8, SIZE, MARS, 255), (np.uint16, 48, MARS_POLAR, 1), (np.int16, 20, MARS, 1),
        (np.float64, SIZE, MARS, 255), (np.float32, 40, "EPSG:4326", 1), (np.uint16, SIZE, MARS, 1),
    ]):
        write_tile(root, tid, dtype=dtype, size=size, crs=crs, mask_scale=scale)
    (root / "train" / "images" / "Image_9.tif").mkdir()
    (root / "train" / "images" / "notes.txt").write_text("field notes")
    make_read_only(root)
    yield base, root
    restore_permissions(base)


def test_train_predict_evaluate_on_a_hostile_but_valid_dataset(hostile_but_valid):
    """Works end to end, through real processes: a 1-step training with data.resize, prediction
    on the dataset's own images (any size: windowed), scoring; nothing written under it."""
    base, data = hostile_but_valid
    env = dict(os.environ, JAXSWIN_CACHE=str(base / "cache"), PYTHONPATH=str(ROOT))
    before = snapshot(data)
    run = base / "run dir ü"
    trained = run_module(
        "jaxswin.train", *TRAIN_ARGS, "--data", str(data), "--workdir", str(run),
        "--set", "data.resize=true", "--set", "train.epochs=1", "--set", "train.batch_size=2",
        "--set", "train.max_steps_per_epoch=1", "--set", "train.eval_batch_size=4",
        cwd=base, env=env,
    )
    assert trained.returncode == 0 and "Traceback" not in trained.stderr, trained.stderr[-3000:]
    assert "different CRSs" in trained.stderr and "skipped" in trained.stderr
    assert (run / "fold0" / "best" / "model.safetensors").is_file()

    out = base / "prédictions"
    predicted = run_module(
        "jaxswin.predict", "--checkpoint", str(run), "--input", str(data / "train" / "images"),
        "--output", str(out), "--tta", "none", "--masks", str(data / "train" / "masks"),
        cwd=base, env=env,
    )
    assert predicted.returncode == 0 and "Traceback" not in predicted.stderr, predicted.stderr
    for tid, size in enumerate([SIZE, 48, 20, SIZE, 40, SIZE]):
        with rasterio.open(out / f"Image_{tid}.tif") as src:
            assert (src.height, src.width) == (size, size)
            assert src.transform == TRANSFORM
    scored = run_module("jaxswin.evaluate", "--pred", str(out), "--masks",
                        str(data / "train" / "masks"), "--json", cwd=base, env=env)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["tiles"] == 6
    assert json.loads((out / "metrics.json").read_text())["tiles"] == 6
    assert snapshot(data) == before


@pytest.mark.parametrize("module, args, expect", [
    ("jaxswin.train", ["--fold", "0", "--data", "no such folder"], "--data no such folder"),
    ("jaxswin.train", ["--fold", "0", "--set", "train.lrr=1"], "did you mean 'lr'"),
    ("jaxswin.predict", ["--checkpoint", "run", "--input", "scene.tif", "--output", "out"],
     "--input scene.tif"),
    ("jaxswin.evaluate", ["--pred", "nowhere", "--masks", "."], "nowhere"),
])
def test_a_real_process_exits_with_one_line(module, args, expect, tmp_path):
    """As a user sees it: exit status 2, one `error:` line, no traceback."""
    env = dict(os.environ, JAXSWIN_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    result = run_module(module, *args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert expect in result.stderr


@pytest.mark.parametrize("shape, size",
                         [((48, 48, 7), SIZE), ((20, 20, 7), SIZE), ((37, 50, 3), 64)])
def test_resize_is_torch_bilinear_and_nearest_exact(shape, size):
    """data.resize against an independent reference: torch's interpolate (bilinear with
    align_corners=False, no antialiasing; nearest-exact for masks)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng()
    image = rng.random(shape, dtype=np.float32)
    mask = (rng.random(shape[:2]) > 0.5).astype(np.uint8)
    image_ref = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
        align_corners=False, antialias=False,
    )[0].permute(1, 2, 0).numpy()
    mask_ref = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None].float(), size=(size, size), mode="nearest-exact"
    )[0, 0].numpy()
    np.testing.assert_allclose(io.resize(image, size), image_ref, atol=1e-6)
    np.testing.assert_array_equal(io.resize(mask, size, nearest=True), mask_ref)
