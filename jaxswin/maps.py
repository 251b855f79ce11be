"""GIS-ready outputs of a mapped scene: Cloud-Optimized GeoTIFFs, landslide polygons, quick-looks.

A :class:`MapWriter` is the Sink of one scene (see jaxswin.inference): finished rows go into
tiled, compressed temporary GeoTIFFs beside the outputs (memory stays bounded by GDAL's block
cache); on close they are vectorised (``--polygons``) and translated by GDAL's COG driver into
Cloud-Optimized GeoTIFFs with overviews (BIGTIFF when the file may pass 4 GB), then removed.

- mask: uint8, 1 landslide, 0 not, 255 nodata (declared as the file's nodata); overviews by
  nearest neighbour.
- probabilities: uint8 round(254 p) by default (p = value / 254; 255 is nodata), or float32
  with NaN as nodata; overviews by averaging the valid pixels.
- polygons: a GeoPackage layer ``landslides`` in the scene's CRS, one polygon per 4-connected
  region of the mask, with its area in m², pixel count and mean probability.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
import rasterio.windows
from rasterio._err import CPLE_BaseError  # GDAL's errors: rasterio.shutil raises them as they are
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from jaxswin.data import bands, io, normalize
from jaxswin.errors import UserError
from jaxswin.inference import NODATA, to_mask

log = logging.getLogger("jaxswin.maps")

PROB_DTYPES = ("uint8", "float32")
PROB_SCALE = 254  # uint8 probabilities: round(254 p), so that 255 stays free for nodata
BLOCK = 512  # COG tile side (GDAL's default)
GDAL_CACHE_MB = 256  # GDAL's block cache while writing: bounds memory whatever the scene size
PREVIEW_SIDE = 1024  # longest side of a quick-look PNG
LAYER = "landslides"


def gdal_env() -> rasterio.Env:
    """The GDAL settings of map writing: a bounded block cache, quiet about missing CRSs."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


@dataclasses.dataclass(frozen=True)
class Targets:
    """The files one scene's map is written to (None: not wanted)."""

    mask: Path
    prob: Path | None = None
    polygons: Path | None = None
    preview: Path | None = None

    def all(self) -> list[Path]:
        return [p for p in (self.mask, self.prob, self.polygons, self.preview) if p is not None]


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial.tif")


def _profile(georef: dict, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff",
        "height": georef["height"],
        "width": georef["width"],
        "count": 1,
        "dtype": dtype,
        "nodata": nodata,
        "crs": georef["crs"],
        "transform": georef["transform"],
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "zlevel": 1,  # a temporary file: fast
        "bigtiff": "IF_SAFER",
    }


def _open_for_writing(path: Path, profile: dict):
    with warnings.catch_warnings():
        # An input without georeferencing (e.g. a plain tifffile stack) gives an output without.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)


def to_cog(source: Path, target: Path, resampling: str) -> None:
    """Translates a tiled GeoTIFF into a Cloud-Optimized GeoTIFF with overviews (GDAL's COG
    driver: overviews computed in bounded memory, IFDs first, tiles in order)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rasterio.shutil.copy(
                source, target, driver="COG", compress="deflate", predictor="yes",
                blocksize=BLOCK, bigtiff="IF_SAFER", overview_resampling=resampling,
            )
    except (RasterioError, CPLE_BaseError, OSError) as err:
        if target.is_file():
            target.unlink()  # a partial COG is no map
        raise UserError(
            f"cannot write {target} ({err}); free some space, fix the folder's permissions or "
            "choose another --output"
        ) from None


class MapWriter:
    """The Sink of one scene: its rows into temporary tiled GeoTIFFs, COGs and polygons on close."""

    def __init__(
        self,
        targets: Targets,
        georef: dict,
        threshold: float,
        prob_dtype: str = "uint8",
        min_area: float = 0.0,
    ):
        if prob_dtype not in PROB_DTYPES:
            raise ValueError(f"probability dtype {prob_dtype!r}: choose one of {PROB_DTYPES}")
        self.targets, self.georef, self.threshold = targets, georef, threshold
        self.prob_dtype, self.min_area = prob_dtype, min_area
        self.counts = {"pixels": 0, "valid": 0, "landslide": 0}
        self.mask_temp = _temp(targets.mask)
        self._mask = _open_for_writing(self.mask_temp, _profile(georef, "uint8", NODATA))
        # Probabilities are kept for the polygons' mean probability even when not saved.
        wants_prob = targets.prob is not None or targets.polygons is not None
        self.prob_temp = _temp(targets.prob or targets.polygons) if wants_prob else None
        self._prob = None
        if self.prob_temp is not None:
            nodata = NODATA if prob_dtype == "uint8" else float("nan")
            self._prob = _open_for_writing(self.prob_temp, _profile(georef, prob_dtype, nodata))

    def write(self, row: int, prob: np.ndarray) -> None:
        window = rasterio.windows.Window(0, row, prob.shape[1], prob.shape[0])
        mask = to_mask(prob, self.threshold)
        self._mask.write(mask, 1, window=window)
        self.counts["pixels"] += mask.size
        self.counts["valid"] += int(np.count_nonzero(mask != NODATA))
        self.counts["landslide"] += int(np.count_nonzero(mask == 1))
        if self._prob is not None:
            self._prob.write(encode_prob(prob, self.prob_dtype), 1, window=window)

    def close(self) -> dict:
        """Finishes the files: polygons from the temporaries, then the COGs. The counts."""
        try:
            self._mask.close()
            if self._prob is not None:
                self._prob.close()
            if self.targets.polygons is not None:
                self.counts["polygons"] = write_polygons(
                    self.mask_temp, self.prob_temp, self.targets.polygons, self.min_area
                )
            to_cog(self.mask_temp, self.targets.mask, "nearest")
            if self.targets.prob is not None:
                to_cog(self.prob_temp, self.targets.prob, "average")
        finally:
            self.discard()
        return self.counts

    def discard(self) -> None:
        """Closes and removes the temporary files (after close, or when a run is interrupted)."""
        for dataset in (self._mask, self._prob):
            if dataset is not None and not dataset.closed:
                dataset.close()
        for temp in (self.mask_temp, self.prob_temp):
            if temp is not None:
                temp.unlink(missing_ok=True)


def encode_prob(prob: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities (NaN = nodata) as stored: float32 as they are, uint8 as round(254 p)."""
    if dtype == "float32":
        return prob.astype(np.float32)
    nodata = np.isnan(prob)
    encoded = np.rint(np.where(nodata, 0, prob) * PROB_SCALE).astype(np.uint8)
    encoded[nodata] = NODATA
    return encoded


def decode_prob(stored: np.ndarray, nodata) -> np.ndarray:
    """Stored probabilities back as float32 in [0, 1], NaN where nodata."""
    if stored.dtype == np.uint8:
        prob = stored.astype(np.float32) / PROB_SCALE
        prob[stored == NODATA] = np.nan
        return prob
    return stored.astype(np.float32)


# ----------------------------------------------------------------------------- polygons


class _GroundArea:
    """Areas in m² on the CRS's own body (Mars, Earth, ...) of polygons in the CRS's coordinates.

    Vertices are mapped to longitude/latitude on the CRS's geodetic datum, and the polygon's ellipsoidal area is computed there (pyproj's Geod):
    true ground areas for projected CRSs whatever their distortion (the equirectangular
    projections of planetary mosaics overstate map area away from the true-scale latitude)
    and for geographic CRSs alike. Without a CRS there is no area (None).
    """

    def __init__(self, crs):
        self.geod, self.to_lonlat = None, None
        if crs is None:
            return
        import pyproj

        try:
            pcrs = pyproj.CRS.from_wkt(crs.to_wkt())
            self.geod = pcrs.get_geod()
            self.to_lonlat = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        except pyproj.exceptions.CRSError as err:
            log.warning("no ground areas: pyproj cannot use this CRS (%s)", err)
            self.geod = None

    def __call__(self, rings: list[list[tuple[float, float]]]) -> float | None:
        if self.geod is None:
            return None
        area = 0.0
        for i, ring in enumerate(rings):
            xs, ys = np.asarray(ring, np.float64).T
            lon, lat = self.to_lonlat.transform(xs, ys)
            ring_area = abs(self.geod.polygon_area_perimeter(lon, lat)[0])
            area += ring_area if i == 0 else -ring_area  # the exterior minus its holes
        return area


def write_polygons(mask_path: Path, prob_path: Path, target: Path, min_area: float) -> int:
    """The landslide regions of a mask file as a GeoPackage layer; the number written.

    GDAL polygonises the file band by band of rows (rasterio.features.shapes on a Band), so a
    scene is never held whole; each polygon's statistics are read from its bounding window.
    """
    import fiona

    target.unlink(missing_ok=True)
    schema = {
        "geometry": "Polygon",
        "properties": {"area_m2": "float", "pixels": "int", "mean_prob": "float"},
    }
    written = 0
    with rasterio.open(mask_path) as masks, rasterio.open(prob_path) as probs:
        crs = masks.crs
        ground_area = _GroundArea(crs)  # None without a CRS: min_area is not applied
        band = rasterio.band(masks, 1)
        with fiona.open(
            target, "w", driver="GPKG", layer=LAYER, schema=schema,
            crs_wkt=crs.to_wkt() if crs is not None else "",
        ) as layer:
            # Shapes (in the CRS) of the 1 (and 255) regions; 0 is left out by the mask.
            for geometry, value in rasterio.features.shapes(band, mask=band):
                if value != 1:
                    continue
                area = ground_area(geometry["coordinates"])
                if area is not None and area < min_area:
                    continue
                pixels, mean_prob = _region_stats(geometry, probs)
                layer.write(fiona.Feature(
                    geometry=fiona.Geometry.from_dict(geometry),
                    properties=fiona.Properties(area_m2=area, pixels=pixels, mean_prob=mean_prob),
                ))
                written += 1
    return written


def _region_stats(geometry: dict, probs) -> tuple[int, float]:
    """Pixel count and mean probability of one polygon (in `probs`' CRS), from its window."""
    window = rasterio.features.geometry_window(probs, [geometry])
    inside = rasterio.features.geometry_mask(
        [geometry], (window.height, window.width), probs.window_transform(window), invert=True
    )
    prob = decode_prob(probs.read(1, window=window), probs.nodata)[inside]
    return int(inside.sum()), float(np.nanmean(prob))


# ----------------------------------------------------------------------------- preview


def write_preview(path: Path, reader: io.SceneReader, mask_path: Path, truth=None) -> None:
    """A quick-look PNG (longest side at most PREVIEW_SIDE): the RGB bands, the prediction over
    them (nodata grey) and, given, the ground truth (the paper's Fig. 2)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    image = reader.overview(PREVIEW_SIDE)
    shape = image.shape[:2]
    rgb = normalize.percentile_scale(image[..., [bands.CHANNELS.index(c) for c in bands.RGB]])
    with rasterio.open(mask_path) as src:
        pred = src.read(1, out_shape=shape)  # nearest, from the COG's overviews
    panels = [("RGB", None, None), ("prediction", pred, "#ff2a2a")]
    if truth is not None:
        step = max(1, -(-max(truth.shape) // PREVIEW_SIDE))  # reader.overview's decimation
        panels.append(("ground truth", truth[::step, ::step], "#2aff6a"))
    scale = 3 / max(shape)
    fig = Figure(figsize=(3 * len(panels), 3 * shape[0] * scale + 0.3), layout="constrained")
    for ax, (title, overlay, colour) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(rgb)
        if overlay is not None:
            ax.imshow(np.ma.masked_equal(overlay == 1, 0), cmap=ListedColormap([colour]), alpha=0.45)
            ax.imshow(np.ma.masked_equal(overlay == NODATA, 0), cmap=ListedColormap(["#808080"]))
        ax.set_title(title)
        ax.axis("off")
    dpi = max(100, min(PREVIEW_SIDE, max(shape)) / 3)
    fig.savefig(path, dpi=dpi)
