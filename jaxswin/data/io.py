"""Reading tiles and masks from disk, as they come.

Tiles are multi-band GeoTIFFs, read through rasterio (any band count, any dtype, nodata), or
height x width x channel stacks written by tifffile. GDAL sees such a stack as one page per
image row (MMLS v1 stores 128 pages of 128 x 7), so those are read with tifffile as the array
they are. Files are only ever opened for reading.

Invalid pixels (the file's nodata value, NaN, Inf, or values at float32's extremes, the habitual
-3.4e38 fill of GDAL tools, declared or not) are not an error: :func:`read_image` returns them
as NaN with one warning line per file, and
:func:`jaxswin.data.normalize.percentile_scale` leaves them out of the P1-P99 range and sets
them to 0 (the band's low end).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
import scipy.ndimage
import rasterio.windows
import tifffile
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from jaxswin.data import bands
from jaxswin.errors import DataError

log = logging.getLogger("jaxswin.data")

TILE_SUFFIXES = (".tif", ".tiff")
EXTREME = 3.0e38  # |value| at float32's extremes (GDAL's -3.4e38 fill): nodata, declared or not
_EXTREMES = "at float32's extremes, |v| >= 3e38 as GDAL's -3.4e38 fill, not declared nodata"
# Longest first, so that ImageT_ is not read as Image plus a T.
_PREFIXES = ("imaget_", "maskt_", "image_", "mask_")


def tile_id(path: str | Path) -> str:
    """The tile's name shared by its image and mask: 'Image_patch_3_4.tif' -> 'patch_3_4'."""
    stem = Path(path).stem
    for prefix in _PREFIXES:
        if stem.lower().startswith(prefix):
            return stem[len(prefix) :]
    return stem


def is_tile(path: Path) -> bool:
    return path.suffix.lower() in TILE_SUFFIXES and path.is_file()


def warn_skipped(skipped: list[Path], why: str = "not a .tif tile") -> None:
    """One warning line for everything a listing left out."""
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("skipped %d file(s) (%s): %s%s", len(skipped), why, shown, more)


def list_tiles(folder: str | Path) -> list[Path]:
    """The .tif/.tiff files of a folder of unlabelled tiles (prediction input), sorted by name.

    Anything else in the folder is skipped with one warning line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of tiles")
    entries = sorted(folder.iterdir())
    tiles = [p for p in entries if is_tile(p)]
    warn_skipped([p for p in entries if not is_tile(p)])
    if not tiles:
        raise DataError(f"{folder}: no .tif/.tiff tiles in this folder")
    return tiles


@contextlib.contextmanager
def _quiet_tifffile():
    # tifffile logs each damaged tag it meets; the DataError we raise says it once.
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_page_stack(path: Path, num_bands: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A tifffile-written stack as (H, W, C) with where its nodata value is, or None for other
    files.

    A stack is a TIFF whose first series spans more than its first page (one page per row or
    per band); anything tifffile cannot parse is left to rasterio, which reports it.
    """
    with _quiet_tifffile():
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError):
            return None
        with tif:
            try:
                series = tif.series[0]
                if series.shape == tif.pages.first.shape:
                    return None
                data = series.asarray()
            except (tifffile.TiffFileError, ValueError, OSError, IndexError) as err:
                raise DataError(f"{path}: truncated or corrupt TIFF ({err})") from None
            nodata = tif.pages.first.tags.get("GDAL_NODATA")
    if data.ndim != 3:
        raise DataError(
            f"{path}: a stack of shape {data.shape}; expected height x width x bands"
        )
    if data.shape[0] == num_bands and data.shape[-1] != num_bands:
        data = np.moveaxis(data, 0, -1)  # bands-first pages, as tifffile writes (C, H, W)
    if nodata is None:
        return data, np.zeros(data.shape, bool)
    return data, data == float(nodata.value)


def _open_rasterio(path: Path):
    """The file opened for reading through rasterio, or a DataError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> DataError:
    detail = err.__cause__ or err  # GDAL's own message: "...IReadBlock failed..."
    return DataError(f"{path}: not a readable GeoTIFF, truncated or corrupt ({detail})")


def wrong_band_count(path: Path, count: int) -> DataError:
    """The error for an image file of `count` bands: every band profile orders the same seven."""
    return DataError(f"{path}: {count} band(s), but the model reads {len(bands.CHANNELS)} "
                     "(thermal, slope, DEM, gray, red, green, blue in any order): stack all seven "
                     "into the file")


def _georef(src) -> dict:
    return {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height}


def at_extremes(values: np.ndarray) -> np.ndarray:
    """Where `values` are finite but at float32's extremes (|v| >= EXTREME): the nodata fill of
    GDAL tools, which files do not always declare."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.abs(values) >= EXTREME)


def _as_float(path: Path, data: np.ndarray, invalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) raw pixels as float32, NaN where `invalid`, not finite or at float32's extremes;
    and where the extremes were without `invalid` saying so (counted in the warnings)."""
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise DataError(f"{path}: pixel type {data.dtype} is not a real number type")
    image = data.astype(np.float32)
    extreme = at_extremes(image) & ~invalid
    invalid |= ~np.isfinite(image) | extreme
    image[invalid] = np.nan
    return image, extreme


def _read_window(path: Path, src, window=None) -> tuple[np.ndarray, np.ndarray]:
    """Bands of `src` (in `window`) as stored, (h, w, C), and where the file's nodata value or
    mask marks them."""
    try:
        masked = src.read(window=window, masked=True)
    except RasterioError as err:
        raise _unreadable(path, err) from None
    return np.moveaxis(masked.data, 0, -1), np.moveaxis(np.ma.getmaskarray(masked), 0, -1)


def _read(path: Path, num_bands: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(H, W, C) pixels as stored, where the file declares them nodata, and the georeference."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a tile file; rename or move it")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); copy it again or remove it")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied; make it readable (chmod a+r) or remove it")
    stack = _read_page_stack(path, num_bands)
    if stack is not None:
        return (*stack, _stack_georef(stack[0]))
    with _open_rasterio(path) as src:
        return (*_read_window(path, src), _georef(src))


def _stack_georef(data: np.ndarray) -> dict:
    height, width = data.shape[:2]
    return {"crs": None, "transform": rasterio.Affine.identity(), "width": width, "height": height}


class SceneReader:
    """A tile or scene opened for reading a strip of rows at a time (a scene never whole).

    `read(row, count)` gives rows [row, row + count) as float32 (count, W, 7) in canonical
    channel order, NaN where any nodata value, mask, NaN or Inf says so. Page stacks (tifffile's
    layout, small tiles) are read whole once; GeoTIFFs through rasterio windows.
    """

    def __init__(self, path: str | Path, channels: tuple[str, ...]):
        self.path, self.order = Path(path), bands.to_canonical(channels)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        stack = _read_page_stack(self.path, len(channels))
        self._src = self._image = None
        # Undeclared extreme values in rows [0, _counted_rows), warned about on closing.
        self._extremes = self._counted_rows = 0
        if stack is not None:
            self._image, extreme = _as_float(self.path, *stack)
            self.georef = _stack_georef(stack[0])
            self._extremes, self._counted_rows = int(extreme.sum()), len(self._image)
            count = self._image.shape[-1]
        else:
            self._src = _open_rasterio(self.path)
            self.georef, count = _georef(self._src), self._src.count
        if count != len(channels):
            self._extremes = 0  # the error says what matters
            self.close()
            raise wrong_band_count(self.path, count)
        self.height, self.width = self.georef["height"], self.georef["width"]

    def read(self, row: int, count: int) -> np.ndarray:
        if self._image is not None:
            rows = self._image[row : row + count]
        else:
            window = rasterio.windows.Window(0, row, self.width, count)
            rows, extreme = _as_float(self.path, *_read_window(self.path, self._src, window))
            # Windows overlap: each row counts once.
            self._extremes += int(extreme[max(0, self._counted_rows - row) :].sum())
            self._counted_rows = max(self._counted_rows, row + count)
        return rows[..., self.order]

    def overview(self, max_side: int) -> np.ndarray:
        """The whole image decimated (nearest) so its longest side is at most `max_side`."""
        step = max(1, -(-max(self.height, self.width) // max_side))
        if self._image is not None:
            return self._image[::step, ::step][..., self.order]
        shape = (self._src.count, -(-self.height // step), -(-self.width // step))
        try:
            masked = self._src.read(out_shape=shape, masked=True)
        except RasterioError as err:
            raise _unreadable(self.path, err) from None
        invalid = np.moveaxis(np.ma.getmaskarray(masked), 0, -1)
        image, _ = _as_float(self.path, np.moveaxis(masked.data, 0, -1), invalid)
        return image[..., self.order]

    def close(self) -> None:
        if self._extremes:
            log.warning("%s: %d pixel value(s) %s: read as nodata", self.path, self._extremes,
                        _EXTREMES)
        self._extremes = 0
        if self._src is not None:
            self._src.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_size(path: Path, image: np.ndarray, size: int | None) -> None:
    if size is not None and image.shape[:2] != (size, size):
        height, width = image.shape[:2]
        raise DataError(
            f"{path}: tile is {height}x{width} pixels; expected {size}x{size} (model.img_size): "
            "re-tile the data, set model.img_size, or resize on loading with "
            "--set data.resize=true"
        )


def read_image(
    path: str | Path, channels: tuple[str, ...], size: int | None = 128
) -> tuple[np.ndarray, dict]:
    """A tile as float32 (H, W, 7) in canonical channel order, and its georeference.

    `channels` is the file's band order (:func:`jaxswin.data.bands.resolve`); `size` the
    expected tile side (None accepts any). Pixel values are raw (not yet scaled); nodata,
    NaN, Inf and float32-extreme pixels are NaN, with one warning line naming the file. The
    georeference is a dict of crs, transform, width and height: with driver, count and dtype
    it is the profile of a GeoTIFF covering the same ground.
    """
    path = Path(path)
    data, nodata, georef = _read(path, len(channels))
    image, extreme = _as_float(path, data, nodata)
    if image.shape[-1] != len(channels):
        raise wrong_band_count(path, image.shape[-1])
    _check_size(path, image, size)
    invalid, extremes = int(np.isnan(image).sum()), int(extreme.sum())
    if invalid:
        log.warning(
            "%s: %d pixel value(s) are nodata, NaN or Inf%s; they are left out of the "
            "P1-P99 range and set to 0 after scaling",
            path,
            invalid,
            f" ({extremes} of them {_EXTREMES})" if extremes else "",
        )
    return image[..., bands.to_canonical(channels)], georef


def read_mask(path: str | Path, size: int | None = 128) -> np.ndarray:
    """A one-band mask as uint8 (H, W): 1 landslide, 0 background.

    The file codes background as 0 and landslide as one positive whole value (1, 255, ...);
    pixels it declares nodata are background (jaxswin.predict writes 255 as nodata). Any other
    value (classes coded 1/2, probabilities, NaN) is an error naming the values found.
    """
    path = Path(path)
    data, nodata, _ = _read(path, 1)
    if data.shape[-1] != 1:
        raise DataError(
            f"{path}: a mask must have one band, this one has {data.shape[-1]}"
        )
    _check_size(path, data, size)
    values, nodata = data[..., 0], nodata[..., 0]
    found = np.unique(values[~nodata])
    landslide = found[found != 0]
    if len(landslide) > 1 or not np.all((landslide > 0) & (landslide % 1 == 0)):
        shown = ", ".join(f"{v:g}" for v in found[:8])
        more = f" and {len(found) - 8} more" if len(found) > 8 else ""
        raise DataError(
            f"{path}: mask values {shown}{more}; a mask holds 0 for background and one "
            "positive whole value (1 or 255) for landslide: recode it (background 0, landslide "
            "1), threshold probabilities into such a mask, or declare a value to ignore as the "
            "file's nodata"
        )
    return ((values != 0) & ~nodata).astype(np.uint8)


def resize(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """(H, W[, C]) -> (size, size[, C]): bilinear (half-pixel centres, edge values repeated, no
    antialiasing: torch's interpolate(align_corners=False) and OpenCV's INTER_LINEAR), or
    nearest-neighbour for masks."""
    zoom = (size / array.shape[0], size / array.shape[1]) + (1,) * (array.ndim - 2)
    order = 0 if nearest else 1
    return scipy.ndimage.zoom(array, zoom, order=order, grid_mode=True, mode="nearest")
