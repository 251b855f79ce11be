"""An embedded synthetic MMLS-like dataset: the default data when no --data is given, and the tests'.

Each tile is a patch of canyon wall in the style of Valles Marineris: a plateau breaking off
along a curved scarp to the canyon floor. Most tiles hold one or two landslides: a source alcove
cut back into the scarp and a hummocky deposit lobe spreading onto the floor below it; the mask
covers alcove and deposit (~35 % of the pixels over the set). From the DEM follow slope (steep
scarps, gently inclined deposits), a CTX-like grayscale (hillshade times albedo, with flow
lineations on deposits) and coarse Viking-like RGB (weak albedo contrast). Thermal inertia is
high on rocky scarps and blocky deposits, low on dusty plateaus. Rocky knobs on the floor are
steep and warm but no landslide, so no single band gives the mask away.

Files are float32 7-band GeoTIFFs in pbvs2026 band order (thermal, slope, DEM, gray, R, G, B)
in physical units, georeferenced in Mars equirectangular coordinates (IAU_2015:49910), with
uint8 masks, as train/ and val/ splits with images/ and masks/ and Image_/Mask_ names.
Generation is deterministic (seeded per tile) and takes a few seconds.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from jaxswin.data import bands
from jaxswin.errors import DataError

VERSION = 2  # bump when the generator changes, so caches regenerate
SIZE = 128
NUM_TRAIN = 128
NUM_VAL = 32
SEED = 0
PIXEL_M = 50.0  # ground sampling distance, metres
MARS_RADIUS_M = 3_396_190.0
CRS = "IAU_2015:49910"  # Mars (2015) sphere, equirectangular
_ORIGIN_DEG = (-72.0, -4.0)  # lon, lat of the tile grid's corner, in Valles Marineris


def _noise(rng: np.random.Generator, size: int, scale_px: float, amplitude: float) -> np.ndarray:
    """Smooth random field with the given correlation length and standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), scale_px, mode="wrap")
    return field * (amplitude / field.std())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def tile(rng: np.random.Generator, size: int = SIZE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic tile: {channel name: (size, size) float32} and its uint8 mask."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    angle = rng.uniform(0, 2 * math.pi)
    # across > 0 is downslope of the scarp (canyon floor), along runs parallel to it.
    across = rows * math.sin(angle) + cols * math.cos(angle) - rng.uniform(-0.4, 0.0) * size
    along = -rows * math.cos(angle) + cols * math.sin(angle)
    across += 6 * np.sin(2 * math.pi * along / rng.uniform(60, 160) + rng.uniform(0, 2 * math.pi))

    scarp_across = across.copy()
    deposit = np.zeros((size, size))
    for _ in range(rng.choice([0, 1, 2], p=[0.1, 0.4, 0.5])):
        centre = rng.uniform(-0.3, 0.3) * size
        half_width = rng.uniform(20, 40)
        runout = rng.uniform(50, 100)
        # The alcove: the scarp retreats into the plateau behind the landslide.
        retreat = rng.uniform(8, 20) * np.clip(1 - ((along - centre) / half_width) ** 2, 0, None)
        scarp_across += retreat
        spread = half_width * rng.uniform(1.0, 1.6)
        # The lobe starts inside the alcove and spreads onto the floor below it.
        lobe = 1 - ((along - centre) / spread) ** 2 - ((across - 0.4 * runout) / (0.6 * runout)) ** 2
        deposit = np.maximum(deposit, np.clip(lobe, 0, None))
    deposit[scarp_across <= 0] = 0  # nothing lands on the plateau
    alcove = (across <= 0) & (scarp_across > 0)
    on_deposit = deposit > 0
    mask = (alcove | on_deposit).astype(np.uint8)

    relief = rng.uniform(500, 1500)
    cliff_px = rng.uniform(15, 30)
    dem = -4000 + relief * _sigmoid(-scarp_across / (cliff_px / 4)) + _noise(rng, size, 20, 60)
    dem += 0.5 * PIXEL_M * np.tan(np.radians(rng.uniform(0, 2))) * across  # regional dip
    hummocks = np.abs(_noise(rng, size, 2, 1.0))
    dem += on_deposit * (rng.uniform(40, 150) * np.sqrt(deposit) + 6 * hummocks)
    knobs = np.zeros((size, size))
    for _ in range(rng.poisson(1.0)):
        r0, c0 = rng.uniform(-0.5, 0.5, size=2) * size
        knobs += np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * rng.uniform(3, 7) ** 2))
    dem += rng.uniform(100, 300) * knobs

    grad_rows, grad_cols = np.gradient(dem, PIXEL_M)
    slope = np.degrees(np.arctan(np.hypot(grad_rows, grad_cols)))
    rock = np.clip(slope / 35, 0, 1)
    thermal = 200 + 300 * rock + 70 * on_deposit + 150 * np.clip(knobs, 0, 1)
    thermal = ndimage.gaussian_filter(thermal + _noise(rng, size, 3, 50), 2)  # ~100 m/px native

    sun_azimuth, sun_elevation = math.radians(rng.uniform(200, 340)), math.radians(35)
    aspect = np.arctan2(-grad_cols, grad_rows)
    slope_rad = np.radians(slope)
    shade = np.sin(sun_elevation) * np.cos(slope_rad) + np.cos(sun_elevation) * np.sin(
        slope_rad
    ) * np.cos(sun_azimuth - aspect)
    lineations = 0.06 * np.sin(2 * math.pi * along / rng.uniform(3, 6)) * on_deposit
    albedo = 0.45 + 0.04 * on_deposit + lineations + _noise(rng, size, 1, 0.03)
    gray = 255 * np.clip(albedo * (0.35 + 0.65 * np.clip(shade, 0, None)), 0, 1)

    # Viking colour at ~232 m/px: blurred albedo and shading, mixed differently per band.
    dark_albedo = ndimage.gaussian_filter(albedo - 0.03 * on_deposit, 4) + _noise(rng, size, 16, 0.04)
    light = ndimage.gaussian_filter(shade, 4)
    channels = {
        "red": 300 * dark_albedo + 20 * light + _noise(rng, size, 6, 4),
        "green": 180 * dark_albedo + 30 * light + _noise(rng, size, 6, 4),
        "blue": 110 * dark_albedo + 40 * light + _noise(rng, size, 6, 4),
        "thermal": thermal,
        "slope": slope,
        "dem": dem,
        "gray": gray,
    }
    return {name: values.astype(np.float32) for name, values in channels.items()}, mask


def _write_tile(folder: Path, name: str, index: int, seed: int, size: int) -> None:
    channels, mask = tile(np.random.default_rng([seed, index]), size)
    order = bands.PROFILES["pbvs2026"]
    grid_col, grid_row = index % 16, index // 16
    x0 = MARS_RADIUS_M * math.radians(_ORIGIN_DEG[0]) + grid_col * size * PIXEL_M
    y0 = MARS_RADIUS_M * math.radians(_ORIGIN_DEG[1]) - grid_row * size * PIXEL_M
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": CRS,
        "transform": rasterio.Affine(PIXEL_M, 0.0, x0, 0.0, -PIXEL_M, y0),
    }
    with rasterio.open(
        folder / "images" / f"Image_{name}.tif", "w", count=len(order), dtype="float32", **profile
    ) as dst:
        dst.write(np.stack([channels[c] for c in order]))
        dst.descriptions = order
    with rasterio.open(
        folder / "masks" / f"Mask_{name}.tif", "w", count=1, dtype="uint8", **profile
    ) as dst:
        dst.write(mask[None])


def generate(
    root: str | Path,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    size: int = SIZE,
    seed: int = SEED,
) -> Path:
    """Writes the dataset under `root` (train/ and val/, each with images/ and masks/)."""
    root = Path(root)
    for split, start, count in (("train", 0, num_train), ("val", num_train, num_val)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for index in range(start, start + count):
            _write_tile(root / split, f"syn_{index:04d}", index, seed, size)
    return root


def ensure(cache: str | Path) -> Path:
    """The default synthetic dataset under `cache`, generated there on first use.

    Generated into a temporary folder and renamed into place, so a crash never leaves half a
    dataset and concurrent first uses (parallel test workers) agree on one copy.
    """
    cache = Path(cache)
    target = cache / f"synthetic-v{VERSION}"
    if target.is_dir():
        return target
    staging = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=cache))
        generate(staging)
        os.rename(staging, target)
    except OSError as err:
        if not target.is_dir():  # not a lost race with another process: a real failure
            raise DataError(
                f"{cache}: cannot write the synthetic dataset here ({err}); "
                "set JAXSWIN_CACHE to a writable folder"
            ) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
