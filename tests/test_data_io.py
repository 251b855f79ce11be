"""Reading tiles and masks, band profiles, dataset discovery and pairing, bad input, MMLS v1."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile

from jaxswin.data import bands, io, open_dataset
from jaxswin.data.dataset import scan
from jaxswin.errors import ConfigError, DataError

MMLS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mmls_v1"
SIZE = 16  # tiny tiles; the reader takes the expected size as a parameter
TRANSFORM = rasterio.Affine(50.0, 0.0, 1000.0, 0.0, -50.0, 2000.0)


def write_geotiff(path, array_chw, nodata=None, crs="IAU_2015:49910"):
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = array_chw.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count,
        dtype=array_chw.dtype, crs=crs, transform=TRANSFORM,
        nodata=nodata,
    ) as dst:
        dst.write(array_chw)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_split(root, split, ids, image_name="Image_{}.tif", mask_name="Mask_{}.tif", rng=None):
    rng = rng or np.random.default_rng(0)
    for tid in ids:
        write_geotiff(root / split / "images" / image_name.format(tid),
                      rng.random((7, SIZE, SIZE), dtype=np.float32))
        write_geotiff(root / split / "masks" / mask_name.format(tid),
                      (rng.random((1, SIZE, SIZE)) > 0.5).astype(np.uint8))


# --- band profiles ----------------------------------------------------------------------------


def test_profiles_name_each_channel_once_and_streams_follow_the_paper():
    assert bands.RGB == ("red", "green", "blue")
    assert bands.AUX == ("thermal", "slope", "dem", "gray")
    for order in bands.PROFILES.values():
        assert sorted(order) == sorted(bands.CHANNELS)
    assert bands.resolve("pbvs2026") == ("thermal", "slope", "dem", "gray", "red", "green", "blue")
    assert bands.resolve("MMLSv1") == ("blue", "green", "red", "dem", "thermal", "slope", "gray")
    assert bands.resolve(" red, green,blue,dem,slope,thermal,gray ") == bands.PROFILES["mmlsv2"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("mmlsv3", ["unknown band profile", "pbvs2026"]),
        ("red,green,blue,elevation,slope,thermal,gray", ["unknown channel", "elevation"]),
        ("red,red,blue,dem,slope,thermal,gray", ["more than once", "red"]),
        ("red,green,blue,dem", ["missing", "slope"]),
    ],
)
def test_bad_band_specs_name_the_option(spec, words):
    with pytest.raises(ConfigError) as err:
        bands.resolve(spec)
    assert "--bands" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_to_canonical_reorders_any_profile():
    rng = np.random.default_rng(1)
    for order in bands.PROFILES.values():
        values = {name: rng.random() for name in order}
        stored = np.array([values[n] for n in order])
        assert np.array_equal(stored[bands.to_canonical(order)], [values[n] for n in bands.CHANNELS])


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, tid",
    [
        ("Image_patch_10_4.tif", "patch_10_4"),
        ("Mask_patch_10_4.tif", "patch_10_4"),
        ("ImageT_0031.tiff", "0031"),
        ("MaskT_0031.TIF", "0031"),
        ("tile_7.tif", "tile_7"),
        ("image_x.tif", "x"),
    ],
)
def test_tile_id_strips_prefix_and_extension(name, tid):
    assert io.tile_id(Path("some/dir") / name) == tid


# --- reading ----------------------------------------------------------------------------------


def test_geotiff_bands_come_back_in_canonical_order_with_georeference(tmp_path):
    rng = np.random.default_rng(2)
    stored = rng.integers(-500, 3000, (7, SIZE, SIZE)).astype(np.int16)
    write_geotiff(tmp_path / "t.tif", stored)
    order = bands.PROFILES["mmlsv2"]
    image, georef = io.read_image(tmp_path / "t.tif", order, SIZE)
    assert image.dtype == np.float32 and image.shape == (SIZE, SIZE, 7)
    for c, name in enumerate(bands.CHANNELS):
        assert np.array_equal(image[..., c], stored[order.index(name)].astype(np.float32))
    assert georef["width"] == georef["height"] == SIZE
    assert georef["transform"] == TRANSFORM
    assert "Mars" in georef["crs"].to_wkt()


def test_nodata_and_non_finite_pixels_become_nan_with_one_warning(tmp_path, caplog):
    stored = np.random.default_rng(3).random((7, SIZE, SIZE)).astype(np.float32)
    stored[0, 0, 0] = -9999.0
    stored[2, 5, 5] = np.inf
    stored[6, 1, 2] = np.nan
    write_geotiff(tmp_path / "t.tif", stored, nodata=-9999.0)
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        image, _ = io.read_image(tmp_path / "t.tif", bands.PROFILES["mmlsv2"], SIZE)
    assert np.isnan(image).sum() == 3
    assert np.isnan(image[0, 0, bands.CHANNELS.index("red")])
    assert np.isnan(image[5, 5, bands.CHANNELS.index("blue")])
    assert np.isnan(image[1, 2, bands.CHANNELS.index("gray")])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "t.tif" in warnings[0].getMessage()


def test_undeclared_float32_extremes_are_nodata_counted_once_per_file(tmp_path, caplog):
    # A collar of GDAL's -3.4e38 fill in a file that declares no nodata value.
    stored = np.random.default_rng(3).random((7, SIZE, SIZE)).astype(np.float32)
    stored[:, :3, :] = np.finfo(np.float32).min
    stored[1, 10, 10] = np.nan
    write_geotiff(tmp_path / "t.tif", stored)
    order = bands.PROFILES["mmlsv2"]
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        image, _ = io.read_image(tmp_path / "t.tif", order, SIZE)
        with io.SceneReader(tmp_path / "t.tif", order) as reader:
            strips = [reader.read(row, 8) for row in (0, 2, 4)]  # overlapping, as windows are
    assert np.isnan(image[:3]).all() and np.isnan(image).sum() == 7 * 3 * SIZE + 1
    assert np.isnan(strips[0][:3]).all() and np.isnan(strips[1][:1]).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    extremes = 7 * 3 * SIZE
    assert len(warnings) == 2 and all("t.tif" in w for w in warnings)
    assert f"{extremes + 1} pixel value(s) are nodata" in warnings[0]
    assert f"{extremes} of them at float32's extremes" in warnings[0]
    assert f"{extremes} pixel value(s) at float32's extremes" in warnings[1]


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_tifffile_stacks_are_read_as_what_they_are(tmp_path, layout):
    # tifffile writes (H, W, 7) as H pages of W x 7 (GDAL sees one 7-pixel-wide band), and
    # (7, H, W) as 7 pages: both must come back as the (H, W, 7) tile.
    hwc = np.random.default_rng(4).random((SIZE, SIZE, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", hwc if layout == "hwc" else np.moveaxis(hwc, -1, 0))
    order = bands.PROFILES["mmlsv1"]
    image, georef = io.read_image(tmp_path / "s.tif", order, SIZE)
    assert np.array_equal(image, hwc[..., bands.to_canonical(order)])
    assert (georef["width"], georef["height"]) == (SIZE, SIZE)


@pytest.mark.parametrize("landslide", [1, 255])
def test_mask_is_one_where_landslide_and_declared_nodata_is_background(tmp_path, landslide):
    values = np.array([[[0, landslide, 7, 0]]], np.uint8)
    write_geotiff(tmp_path / "m.tif", values, nodata=7)
    assert io.read_mask(tmp_path / "m.tif", None).tolist() == [[0, 1, 0, 0]]


@pytest.mark.parametrize("values, shown", [
    ([1, 2, 2, 1], "mask values 1, 2;"),  # background 1, landslide 2
    ([0, 0.25, 0.5, 1], "mask values 0, 0.25, 0.5, 1;"),  # soft labels
    ([0, 1, np.nan, 1], "mask values 0, 1, nan;"),  # undeclared NaN
    ([0, -1, 0, 1], "mask values -1, 0, 1;"),
])
def test_a_mask_of_other_values_is_an_error_naming_them(tmp_path, values, shown):
    write_geotiff(tmp_path / "m.tif", np.array([[values]], np.float32))
    with pytest.raises(DataError) as err:
        io.read_mask(tmp_path / "m.tif", None)
    assert "m.tif" in str(err.value) and shown in str(err.value)
    assert "recode it (background 0, landslide" in str(err.value)


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(5)
    write_geotiff(tmp_path / "trunc.tif", rng.random((7, SIZE, SIZE), dtype=np.float32))
    tifffile.imwrite(tmp_path / "trunc_stack.tif", rng.random((SIZE, SIZE, 7), dtype=np.float32))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    write_geotiff(tmp_path / "five.tif", rng.random((5, SIZE, SIZE), dtype=np.float32))
    write_geotiff(tmp_path / "small.tif", rng.random((7, SIZE // 2, SIZE // 2), dtype=np.float32))
    write_geotiff(tmp_path / "rgb_mask.tif", np.zeros((3, SIZE, SIZE), np.uint8))
    return {
        "truncated GeoTIFF": (lambda: io.read_image(_truncated(tmp_path / "trunc.tif"),
                                                    bands.CHANNELS, SIZE), "trunc.tif"),
        "truncated stack": (lambda: io.read_image(_truncated(tmp_path / "trunc_stack.tif"),
                                                  bands.CHANNELS, SIZE), "trunc_stack.tif"),
        "not a TIFF": (lambda: io.read_image(tmp_path / "junk.tif", bands.CHANNELS, SIZE),
                       "junk.tif"),
        "missing": (lambda: io.read_image(tmp_path / "nope.tif", bands.CHANNELS, SIZE), "nope.tif"),
        "band count": (lambda: io.read_image(tmp_path / "five.tif", bands.CHANNELS, SIZE),
                       "5 band(s)"),
        "tile size": (lambda: io.read_image(tmp_path / "small.tif", bands.CHANNELS, SIZE),
                      f"expected {SIZE}x{SIZE}"),
        "multi-band mask": (lambda: io.read_mask(tmp_path / "rgb_mask.tif", SIZE), "one band"),
    }


@pytest.mark.parametrize(
    "case", ["truncated GeoTIFF", "truncated stack", "not a TIFF", "missing", "band count",
             "tile size", "multi-band mask"],
)
def test_bad_files_raise_a_data_error_naming_the_file(tmp_path, case):
    read, words = _bad_inputs(tmp_path)[case]
    with pytest.raises(DataError) as err:
        read()
    message = str(err.value)
    assert str(tmp_path) in message and words in message


def test_list_tiles_skips_other_files_with_one_warning(tmp_path, caplog):
    for name in ("b.tif", "a.TIFF", "notes.txt", "test", ".DS_Store"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        tiles = io.list_tiles(tmp_path)
    assert [p.name for p in tiles] == ["a.TIFF", "b.tif"]
    assert len(caplog.records) == 1 and "4 file(s)" in caplog.records[0].getMessage()
    with pytest.raises(DataError, match="no .tif"):
        io.list_tiles(tmp_path / "sub")


# --- dataset layouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_name, mask_name",
    [("Image_{}.tif", "Mask_{}.tif"), ("ImageT_{}.tif", "MaskT_{}.tif"), ("{}.tif", "{}.tif")],
)
def test_split_folders_pair_images_and_masks_by_tile_id(tmp_path, image_name, mask_name):
    write_split(tmp_path, "train_partition", ["a", "b", "c"], image_name, mask_name)
    write_split(tmp_path, "validation_partition", ["d"], image_name, mask_name)
    write_split(tmp_path, "test", ["e"], image_name, mask_name)
    dataset = scan(tmp_path, bands.CHANNELS, SIZE)
    assert dataset.splits == ("train", "val", "test")
    assert [(s.id, s.split) for s in dataset.samples] == [
        ("a", "train"), ("b", "train"), ("c", "train"), ("d", "val"), ("e", "test")]
    for sample in dataset.samples:
        assert io.tile_id(sample.mask) == sample.id and sample.mask.parent.name == "masks"
    images, masks = dataset.load()
    assert images.shape == (5, SIZE, SIZE, 7) and masks.shape == (5, SIZE, SIZE)
    assert dataset.load()[0] is images  # decoded once


def test_a_labelled_split_of_another_name_is_named_unused(tmp_path, caplog):
    write_split(tmp_path, "train", ["a", "b"])
    write_split(tmp_path, "dev", ["c", "d", "e"])
    write_split(tmp_path, "test", ["f"])
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        dataset = scan(tmp_path, bands.CHANNELS, SIZE)
    assert dataset.splits == ("train", "test", "dev")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0]
    assert "split(s) dev (3 tiles) left unused" in warnings[0]
    assert "the folds pool train and val" in warnings[0] and "rename" in warnings[0]


def test_flat_root_and_csv_lists(tmp_path):
    write_split(tmp_path / "flat", ".", ["x", "y"])
    assert [s.split for s in scan(tmp_path / "flat", bands.CHANNELS, SIZE).samples] == ["train"] * 2

    root = tmp_path / "listed"
    write_split(root, "files", ["p", "q", "r"])
    (root / "train.csv").write_text(
        "image,mask\nfiles/images/Image_p.tif,files/masks/Mask_p.tif\n"
        "files/images/Image_q.tif,files/masks/Mask_q.tif\n")
    (root / "val.csv").write_text(
        "Image_Path,Mask_Path\nfiles/images/Image_r.tif,files/masks/Mask_r.tif\n")
    dataset = scan(root, bands.CHANNELS, SIZE)
    assert [(s.id, s.split) for s in dataset.samples] == [("p", "train"), ("q", "train"), ("r", "val")]

    (root / "val.csv").write_text("image,mask\nfiles/images/Image_r.tif,\n")
    with pytest.raises(DataError, match="val.csv, line 2"):
        scan(root, bands.CHANNELS, SIZE)
    (root / "val.csv").write_text("tile,label\nfiles/images/Image_r.tif,files/masks/Mask_r.tif\n")
    with pytest.raises(DataError, match="val.csv: a tile list needs"):
        scan(root, bands.CHANNELS, SIZE)
    (root / "val.csv").write_text("image,mask\nfiles/images/Image_r.tif,files/masks/Mask_s.tif\n")
    with pytest.raises(DataError, match="Mask_s.tif: listed in"):
        scan(root, bands.CHANNELS, SIZE)


def test_an_image_without_mask_is_an_error_and_strays_are_skipped_once(tmp_path, caplog):
    write_split(tmp_path, "train", ["a", "b"])
    (tmp_path / "train" / "images" / "test").write_bytes(b"\n")
    write_split(tmp_path, "train", ["orphan"], image_name="../unused/Image_{}.tif")
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        dataset = scan(tmp_path, bands.CHANNELS, SIZE)
    assert [s.id for s in dataset.samples] == ["a", "b"]
    assert len(caplog.records) == 1
    assert "test" in caplog.records[0].getMessage() and "Mask_orphan" in caplog.records[0].getMessage()

    (tmp_path / "train" / "masks" / "Mask_b.tif").unlink()
    with pytest.raises(DataError, match="Image_b.tif: no mask for tile 'b'"):
        scan(tmp_path, bands.CHANNELS, SIZE)
    with pytest.raises(DataError, match="no labelled tiles"):
        scan(tmp_path / "train" / "masks", bands.CHANNELS, SIZE)
    with pytest.raises(DataError, match="no such dataset folder"):
        open_dataset(str(tmp_path / "absent"), "pbvs2026")


def test_synthetic_default_rejects_another_band_order():
    with pytest.raises(ConfigError, match="pbvs2026"):
        open_dataset(None, "mmlsv1")


# --- MMLS v1 (real data) ----------------------------------------------------------------------

mmls = pytest.mark.skipif(not MMLS.is_dir(), reason=f"real dataset not found at {MMLS}")


@pytest.mark.mmls
@mmls
def test_mmls_v1_pairs_every_tile_and_matches_a_plain_numpy_reading(caplog):
    before = tree_digest(MMLS)
    with caplog.at_level(logging.WARNING, logger="jaxswin.data"):
        dataset = open_dataset(str(MMLS), "mmlsv1")
        images, masks = dataset.load()
    assert tree_digest(MMLS) == before  # nothing written or changed

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "images/test" in warnings[0] and "masks/test" in warnings[0]
    for split, folder in (("train", "train_partition"), ("val", "validation_partition")):
        on_disk = {io.tile_id(p) for p in (MMLS / folder / "images").glob("*.tif")}
        assert {s.id for s in dataset.samples if s.split == split} == on_disk
    for sample in dataset.samples:
        assert sample.mask.name == f"Mask_{sample.id}.tif"

    # The files are tifffile (H, W, 7) stacks in B, G, R, DEM, thermal, slope, gray order.
    raw = np.stack([tifffile.imread(s.image) for s in dataset.samples]).astype(np.float64)
    canonical = raw[..., [2, 1, 0, 4, 5, 3, 6]]
    low = np.percentile(canonical, 1, axis=(1, 2), keepdims=True)
    high = np.percentile(canonical, 99, axis=(1, 2), keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    expected = np.where(high > low, (np.clip(canonical, low, high) - low) / span, 0.0)
    # Channel statistics (summed in float64: float32 sums over 5M pixels drift by 1e-3).
    axes = (0, 1, 2)
    np.testing.assert_allclose(images.mean(axes, np.float64), expected.mean(axes), atol=1e-6)
    np.testing.assert_allclose(images.std(axes, np.float64), expected.std(axes), atol=1e-6)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    truth = np.stack([tifffile.imread(s.mask) for s in dataset.samples]) > 0
    assert np.array_equal(masks, truth)
