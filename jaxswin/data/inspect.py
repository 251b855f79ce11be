"""Which band is which: band statistics, and the band order the pixels themselves show.

A wrong band profile does not fail: the model just reads DEM as red. So the roles of the seven
bands are inferred from physical relations between them, never from names or metadata:

- slope follows the DEM: the gradient magnitude of the DEM band, |∇DEM| (computed with the
  georeferenced pixel size; slope in degrees is atan(|∇DEM|)), rises and falls with the slope
  band. Compared by rank correlation (Spearman's ρ), which does not care about units, scales or
  the atan, so tiles without georeference (MMLS v1) or DEMs in other units are judged alike;
  the ordered pair (DEM, slope) with the highest ρ is taken.
- colour bands agree with each other: of the other five bands, the three with the highest mean
  mutual correlation are red, green and blue. Green is the middle one: it correlates best with
  both others, and its brightness lies between theirs (two votes per tile); red is brighter
  than blue (Mars is red) in raw, unnormalised bands.
- gray is an image of the same ground: it is close to a linear mix of R, G, B (least-squares
  R²) and it shows the relief's shading: sunlit slopes bright, shadowed ones dark, so the
  direction of the DEM's gradient explains it beyond the gradient's magnitude (the R² of a fit
  on ∂DEM/∂x, ∂DEM/∂y and |∇DEM| minus that on |∇DEM| alone; a band that only follows
  steepness, like thermal inertia high on rocky scarps, gains nothing from the direction);
  of the two bands left, the one that scores higher on the mean of the two R² in most tiles.
- thermal is what is left.

Every statistic is computed per tile (or scene window) on the pixels valid in every band, then
summarised by its median over the tiles, so per-tile scaling, nodata, constant bands (NaN
correlations, left out) and a few odd tiles do not sway it. Each inference step has a margin
over its runner-up; a step whose margin is small is *weak*. A declared profile is
*contradicted* when it puts a band where strong evidence says it is not, *uncertain* when it
differs only where the evidence is weak, and the whole check is *undetermined* (never an
error) when too few tiles have valid pixels, or no DEM/slope pair or colour triple stands out.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import tifffile
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from scipy import stats as scipy_stats

from jaxswin.data import bands, io
from jaxswin.data.dataset import Dataset
from jaxswin.errors import ConfigError, DataError

log = logging.getLogger("jaxswin.data")

NUM_BANDS = len(bands.CHANNELS)
MODES = ("error", "warn", "off")
WINDOW = 128  # side of the windows sampled from a scene
WINDOWS_PER_SCENE = 16  # windows read from each scene when every file is read
MIN_VALID = 256  # valid pixels a tile needs to count as evidence
MAX_PIXELS = 4096  # pixels per tile the statistics use
MIN_TILES = 3  # tiles with evidence needed to judge at all
# Fewer tiles than this never make strong evidence (a single tile's four quadrants misjudged
# 1.5 % of synthetic tiles); samples of fewer tiles are judged on their quadrants.
FEW_TILES = 12
# A step is strong when its best choice beats the runner-up by these margins.
MIN_SLOPE_RHO, SLOPE_MARGIN = 0.5, 0.1
MIN_COLOUR_R, COLOUR_MARGIN = 0.5, 0.1
MIN_VOTE = 0.75  # share of tiles that must agree on gray vs thermal, green, red vs blue
GRAY_MARGIN = 0.03  # median per-tile gray-score difference


# ----------------------------------------------------------------------------- reading samples


@dataclasses.dataclass(frozen=True)
class Sample:
    """Raw tiles (H, W, 7) float32 in FILE band order with NaN for nodata, and where from."""

    tiles: list[np.ndarray]
    files: int  # files in the input
    files_read: int
    dtypes: tuple[str, ...]  # the files' pixel types, one per band (of the first file read)
    pixel_size: float | None  # ground units (metres) per pixel, None when not georeferenced
    extremes: np.ndarray  # per band: values at float32's extremes (undeclared nodata), made NaN


def _pixel_size(crs, transform) -> float | None:
    """Pixel side in the CRS's linear unit scaled to metres; None without a projected CRS."""
    if crs is None or not crs.is_projected:
        return None  # ungeoreferenced or degrees: gradients per pixel (ρ does not mind)
    return float(abs(transform.a)) * crs.linear_units_factor[1]


def _windows(height: int, width: int, count: int) -> list[Window]:
    """Up to `count` WINDOW-sized windows on an even grid over the raster (one if it is small)."""
    if height <= 2 * WINDOW and width <= 2 * WINDOW:
        return [Window(0, 0, width, height)]
    rows = np.arange(0, max(height - WINDOW, 0) + 1, WINDOW)
    cols = np.arange(0, max(width - WINDOW, 0) + 1, WINDOW)
    grid = [(r, c) for r in rows for c in cols]
    chosen = np.unique(np.linspace(0, len(grid) - 1, min(count, len(grid))).round().astype(int))
    return [Window(int(grid[i][1]), int(grid[i][0]), WINDOW, WINDOW) for i in chosen]


def _read_file(path: Path, windows_per_scene: int) -> tuple[list[np.ndarray], tuple, float | None]:
    """Tiles (or scene windows) of one file, the bands' dtypes and the pixel size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count not in (1, NUM_BANDS):  # 1: maybe a stack of pages (MMLS v1)
                    raise io.wrong_band_count(path, src.count)
                if src.count == NUM_BANDS:
                    tiles = []
                    for window in _windows(src.height, src.width, windows_per_scene):
                        masked = src.read(window=window, masked=True)
                        tile = np.moveaxis(masked.data, 0, -1).astype(np.float32)
                        tile[np.moveaxis(np.ma.getmaskarray(masked), 0, -1)] = np.nan
                        tile[~np.isfinite(tile)] = np.nan
                        tiles.append(tile)
                    return tiles, tuple(src.dtypes), _pixel_size(src.crs, src.transform)
    except RasterioError:
        pass  # not for GDAL as a 7-band raster: io's reader says what is wrong with it
    # A height x width x band stack (MMLS v1) or anything else: io reads or rejects it. Reading
    # with the canonical names as the file's order leaves the bands in file order.
    image, georef = io.read_image(path, bands.CHANNELS, size=None)
    with tifffile.TiffFile(path) as tif:
        dtype = tif.series[0].dtype.name
    return [image], (dtype,) * NUM_BANDS, _pixel_size(georef["crs"], georef["transform"])


def input_files(path: str | Path) -> list[Path]:
    """The tile/scene files of a file or folder (searched recursively for images/ folders)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if io.is_tile(p) and "masks" not in p.parts)
    if not files:
        raise DataError(f"{path}: no .tif/.tiff files here")
    return files


def read_sample(files: Sequence[Path], count: int = 32) -> Sample:
    """`count` files spread evenly over `files` (all when count <= 0), scenes as windows."""
    files = list(files)
    if count > 0 and len(files) > count:
        files_read = [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    else:
        files_read = files
    tiles, dtypes, pixel_size = [], (), None
    extremes = np.zeros(NUM_BANDS, np.int64)
    # Scenes share the budget of `count` windows (a few each at least).
    per_scene = max(4, -(-count // max(len(files_read), 1))) if count > 0 else WINDOWS_PER_SCENE
    for path in files_read:
        got, file_dtypes, size = _read_file(path, per_scene)
        for tile in got:
            # +-3.4e38 is GDAL's habitual nodata; files that do not declare it still mean it.
            extreme = io.at_extremes(tile)
            extremes += extreme.sum((0, 1))
            tile[extreme] = np.nan
        tiles += got
        dtypes, pixel_size = dtypes or file_dtypes, pixel_size or size
    return Sample(tiles, len(files), len(files_read), dtypes, pixel_size, extremes)


def band_stats(sample: Sample) -> list[dict]:
    """Per band: min, max, mean, std over the valid pixels, nodata share, dtype."""
    pixels = np.concatenate([t.reshape(-1, NUM_BANDS) for t in sample.tiles]
                            or [np.full((1, NUM_BANDS), np.nan, np.float32)])
    rows = []
    for band in range(NUM_BANDS):
        values = pixels[:, band]
        valid = values[np.isfinite(values)].astype(np.float64)
        nodata = 1.0 - valid.size / max(values.size, 1)
        if not valid.size:
            valid = np.array([np.nan])  # all nodata: NaN statistics, printed as nan
        rows.append({
            "band": band + 1,
            "dtype": sample.dtypes[band] if sample.dtypes else "?",
            "min": float(valid.min()), "max": float(valid.max()),
            "mean": float(valid.mean()), "std": float(valid.std()),
            "nodata": nodata,
            "extremes": int(sample.extremes[band]),
        })
    return rows


# ----------------------------------------------------------------------------- per-tile statistics


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Per-tile statistics of a sample, tiles stacked on the first axis (NaN where undefined).

    corr[t, i, j]: Pearson r of bands i and j; slope_rho[t, d, s]: Spearman ρ of |∇band d| and
    band s; slope_error[t, d, s]: median |band s - atan(|∇band d|)| in degrees (NaN when the
    pixel size is unknown); shading_r2[t, g, d]: R² of band g on the gradient (x, y and
    magnitude) of band d minus its R² on the magnitude alone;
    mean[t, i]: mean of band i.
    """

    corr: np.ndarray
    slope_rho: np.ndarray
    slope_error: np.ndarray
    shading_r2: np.ndarray
    mean: np.ndarray
    pixel_size: float | None

    @property
    def tiles(self) -> int:
        return len(self.mean)

    def median(self, name: str) -> np.ndarray:
        return _nanmedian(getattr(self, name))

    def mix_r2(self, target: int, predictors: Sequence[int]) -> np.ndarray:
        """Per tile: R² of the least-squares fit of band `target` on the `predictors` bands."""
        return _r2_from_corr(self.corr, target, list(predictors))


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median over tiles (axis 0) of the defined values; NaN where none is (a constant band)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=0)


def _r2_from_corr(corr: np.ndarray, target, predictors: list[int]) -> np.ndarray:
    """R² = rᵀ R⁻¹ r of a linear fit (with intercept), from correlations, per tile."""
    r = corr[:, predictors, target]
    inner = corr[:, predictors][:, :, predictors]
    ok = np.isfinite(r).all(1) & np.isfinite(inner).all((1, 2))
    out = np.full(len(corr), np.nan)
    if ok.any():
        # pinv: colour bands can be nearly collinear (r ~ 0.99), and that is fine here.
        solved = np.einsum("ti,tij,tj->t", r[ok], np.linalg.pinv(inner[ok], rcond=1e-6), r[ok])
        out[ok] = np.clip(solved, 0.0, 1.0)
    return out


def _tile_statistics(tile: np.ndarray, pixel_size: float | None):
    """The statistics of one tile, or None when it has too few valid pixels."""
    data = tile.astype(np.float64)
    spacing = pixel_size or 1.0
    grad_rows, grad_cols = np.gradient(data, spacing, axis=(0, 1))  # NaN next to nodata
    magnitude = np.hypot(grad_rows, grad_cols)
    valid = np.isfinite(data).all(-1) & np.isfinite(magnitude).all(-1)
    if valid.sum() < MIN_VALID:
        return None
    # An even spread of valid pixels is plenty for correlations, and keeps the check cheap.
    where = np.flatnonzero(valid)[:: -(-int(valid.sum()) // MAX_PIXELS)]
    values = data.reshape(-1, NUM_BANDS)[where]
    magnitude = magnitude.reshape(-1, NUM_BANDS)[where]
    grad_cols = grad_cols.reshape(-1, NUM_BANDS)[where]
    grad_rows = grad_rows.reshape(-1, NUM_BANDS)[where]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant band: NaN correlations
        corr = np.corrcoef(np.concatenate([values, grad_cols, grad_rows, magnitude], 1),
                           rowvar=False)
        ranks = scipy_stats.rankdata(np.concatenate([magnitude, values], 1), axis=0)
        rho = np.corrcoef(ranks, rowvar=False)[:NUM_BANDS, NUM_BANDS:]
    # Shading: what the gradient's direction explains beyond its magnitude (sunlit slopes
    # bright, shadowed ones dark). Anything that only follows steepness (slope, and a thermal
    # inertia high on rocky scarps) gains nothing from the direction.
    shading = np.full((NUM_BANDS, NUM_BANDS), np.nan)
    for dem in range(NUM_BANDS):
        gradient = [NUM_BANDS + dem, 2 * NUM_BANDS + dem, 3 * NUM_BANDS + dem]
        for band in range(NUM_BANDS):
            steepness = corr[band, 3 * NUM_BANDS + dem] ** 2
            shading[band, dem] = _r2_from_corr(corr[None], band, gradient)[0] - steepness
    if pixel_size is not None:
        degrees = np.degrees(np.arctan(magnitude))
        error = np.median(np.abs(values[:, None, :] - degrees[:, :, None]), axis=0)
    else:
        error = np.full((NUM_BANDS, NUM_BANDS), np.nan)
    np.fill_diagonal(rho, np.nan)  # a band's own gradient is no evidence
    np.fill_diagonal(shading, np.nan)
    return corr[:NUM_BANDS, :NUM_BANDS], rho, error, shading, values.mean(0)


def _quadrants(tile: np.ndarray) -> list[np.ndarray]:
    half_rows, half_cols = tile.shape[0] // 2, tile.shape[1] // 2
    return [tile[r : r + half_rows, c : c + half_cols]
            for r in (0, half_rows) for c in (0, half_cols)]


def evidence(sample: Sample) -> Evidence:
    """The per-tile statistics of every tile with enough valid pixels.

    A sample of a few tiles (one file, say) is judged on their quadrants: the votes need tiles.
    """
    tiles = sample.tiles
    if len(tiles) < FEW_TILES:
        tiles = [part for tile in tiles for part in _quadrants(tile)]
    rows = [s for t in tiles if (s := _tile_statistics(t, sample.pixel_size)) is not None]
    if not rows:
        empty = np.zeros((0, NUM_BANDS, NUM_BANDS))
        return Evidence(empty, empty, empty, empty, np.zeros((0, NUM_BANDS)), sample.pixel_size)
    corr, rho, error, shading, mean = (np.stack(column) for column in zip(*rows))
    return Evidence(corr, rho, error, shading, mean, sample.pixel_size)


# ----------------------------------------------------------------------------- inference

_GROUPS = {"dem": "terrain", "slope": "terrain", "red": "colour", "green": "colour",
           "blue": "colour", "gray": "rest", "thermal": "rest"}


@dataclasses.dataclass(frozen=True)
class Inference:
    """The band order the evidence shows: `order[i]` is the role of file band i.

    `strong` says, per step (terrain, colour, gray, green, red_blue), whether its choice beat
    the runner-up clearly; `lines` are the evidence in words. `order` is None when the sample
    cannot tell (then `reason` says why).
    """

    order: tuple[str, ...] | None
    strong: dict[str, bool]
    lines: list[str]
    reason: str = ""
    tiles: int = 0
    summary: str = ""  # the decisive evidence in a few words


def _finite(values: np.ndarray, fill: float = -np.inf) -> np.ndarray:
    return np.where(np.isfinite(values), values, fill)


def _vote(per_tile: np.ndarray) -> tuple[float, float]:
    """(median, share of tiles > 0) of a per-tile difference, NaN tiles left out."""
    values = per_tile[np.isfinite(per_tile)]
    if not values.size:
        return 0.0, 0.5
    return float(np.median(values)), float(np.mean(values > 0))


def _gray_score(ev: Evidence, band: int, colour: Sequence[int], dem: int) -> np.ndarray:
    """Per tile: mean of R² on the colour bands and shading R² on the DEM's gradient.

    A band constant in a tile (NaN R²) explains nothing there: it scores 0, not NaN.
    """
    fits = np.stack([ev.mix_r2(band, colour), ev.shading_r2[:, band, dem]])
    return np.mean(_finite(fits, 0.0), axis=0)


def _mark(strong: bool) -> str:
    return "strong" if strong else "WEAK"


def _colour_order(ev: Evidence, colour: tuple, enough: bool, strong: dict):
    """(red, green, blue, report line) of the three colour bands; sets strong["green"] and
    strong["red_blue"]."""
    # Green lies between red and blue in wavelength: per tile it correlates best with both
    # others, and on reddish Mars its brightness is between theirs. Two votes per tile.
    ties = np.stack([_finite(ev.corr[:, m, [o for o in colour if o != m]], -1.0).sum(1)
                     for m in colour], 1)
    means = ev.mean[:, list(colour)]
    middle_by_corr = np.argmax(ties, axis=1)
    middle_by_light = np.argsort(means, axis=1)[:, 1]
    votes = [(np.mean(middle_by_corr == m), np.mean(middle_by_light == m)) for m in range(3)]
    green_at = max(range(3), key=lambda m: (sum(votes[m]), votes[m][0]))
    green = colour[green_at]
    strong["green"] = enough and bool(sum(votes[green_at]) >= 2 * MIN_VOTE)
    red, blue = [b for b in colour if b != green]
    _, red_share = _vote(ev.mean[:, red] - ev.mean[:, blue])
    if red_share < 0.5:
        red, blue, red_share = blue, red, 1.0 - red_share
    strong["red_blue"] = enough and bool(red_share >= MIN_VOTE)
    line = (f"colour order: green is band {green + 1}, the middle one by correlation in "
            f"{votes[green_at][0]:.0%} and by brightness in {votes[green_at][1]:.0%} of tiles "
            f"[{_mark(strong['green'])}]; red is band {red + 1}, brighter than blue band "
            f"{blue + 1} in {red_share:.0%} of tiles (Mars is red) [{_mark(strong['red_blue'])}]")
    return red, green, blue, line


def infer(ev: Evidence) -> Inference:
    """The most plausible role of every band, step by step (see the module docstring)."""
    if ev.tiles < MIN_TILES:
        return Inference(None, {}, [], f"only {ev.tiles} tile(s) with {MIN_VALID}+ valid pixels "
                         f"in every band (need {MIN_TILES})", ev.tiles)
    lines = [f"evidence: medians over {ev.tiles} tiles/windows with {MIN_VALID}+ pixels valid in "
             "every band; bands numbered from 1 as in the file"]
    enough = ev.tiles >= FEW_TILES
    if not enough:
        lines[0] += f"; under {FEW_TILES} tiles, so every step counts as weak"
    rho = _finite(ev.median("slope_rho"))
    ranked = np.argsort(rho, axis=None)[::-1]
    dem, slope = np.unravel_index(ranked[0], rho.shape)
    best, runner = rho[dem, slope], rho.flat[ranked[1]]
    if not best >= MIN_SLOPE_RHO:
        return Inference(None, {}, lines, "no band follows another band's gradient magnitude "
                         f"(best Spearman rho {best:.2f} < {MIN_SLOPE_RHO})", ev.tiles)
    strong = {"terrain": enough and bool(best - runner >= SLOPE_MARGIN)}
    error = ev.median("slope_error")[dem, slope]
    degrees = f"; |slope - atan(|grad DEM|)| median {error:.2f} deg" if np.isfinite(error) else (
        "; pixel size unknown (no projected CRS): compared per pixel")
    runner_pair = np.unravel_index(ranked[1], rho.shape)
    lines.append(f"slope follows the DEM: |grad band {dem + 1}| vs band {slope + 1}: rho "
                 f"{best:.2f} (next: |grad band {runner_pair[0] + 1}| vs band "
                 f"{runner_pair[1] + 1}: {runner:.2f}){degrees} [{_mark(strong['terrain'])}]")

    corr = ev.median("corr")
    rest = [b for b in range(NUM_BANDS) if b not in (dem, slope)]

    def agreement(triple) -> float:
        pairs = itertools.combinations(triple, 2)
        return float(np.mean([_finite(corr[a, b], -1.0) for a, b in pairs]))

    triples = sorted(itertools.combinations(rest, 3), key=agreement, reverse=True)
    coherence = [agreement(t) for t in triples[:2]]
    colour = triples[0]
    if not coherence[0] >= MIN_COLOUR_R:
        return Inference(None, {}, lines, "no three bands agree like colour bands (best mean r "
                         f"{coherence[0]:.2f} < {MIN_COLOUR_R})", ev.tiles)
    strong["colour"] = enough and bool(coherence[0] - coherence[1] >= COLOUR_MARGIN)
    lines.append(f"colour bands agree: bands {', '.join(str(b + 1) for b in colour)}: mean r "
                 f"{coherence[0]:.2f} (next triple {coherence[1]:.2f}) [{_mark(strong['colour'])}]")

    first, second = [b for b in rest if b not in colour]
    scores = {b: _gray_score(ev, b, colour, dem) for b in (first, second)}
    median, share = _vote(scores[first] - scores[second])
    gray, thermal = (first, second) if median > 0 else (second, first)
    share = share if median > 0 else 1.0 - share
    strong["gray"] = enough and bool(share >= MIN_VOTE and abs(median) >= GRAY_MARGIN)
    mix = {b: float(_nanmedian(ev.mix_r2(b, colour))) for b in (gray, thermal)}
    shade = ev.median("shading_r2")
    lines.append(f"gray is an image: band {gray + 1}: R² {mix[gray]:.2f} as a linear mix of the "
                 f"colour bands, {shade[gray, dem]:.2f} on the DEM's gradient direction "
                 f"(shading); band "
                 f"{thermal + 1}: {mix[thermal]:.2f}, {shade[thermal, dem]:.2f}; band {gray + 1} "
                 f"scores higher in {share:.0%} of tiles [{_mark(strong['gray'])}]; "
                 f"thermal is band {thermal + 1}, what is left")

    red, green, blue, line = _colour_order(ev, colour, enough, strong)
    lines.append(line)

    order = [""] * NUM_BANDS
    for role, band in zip(("dem", "slope", "gray", "thermal", "red", "green", "blue"),
                          (dem, slope, gray, thermal, red, green, blue)):
        order[band] = role
    summary = (f"slope band {slope + 1} follows the gradient of DEM band {dem + 1}, rho "
               f"{best:.2f}; colour bands {', '.join(str(b + 1) for b in colour)} agree, r "
               f"{coherence[0]:.2f}")
    return Inference(tuple(order), strong, lines, tiles=ev.tiles, summary=summary)


# ----------------------------------------------------------------------------- verdicts


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a declared band order stands against the inference.

    status: fits | contradicted (strong evidence against it) | uncertain (it differs only where
    the evidence is weak) | undetermined (the sample cannot tell).
    """

    status: str
    differences: tuple[str, ...] = ()


def _separating_steps(declared: str, inferred: str) -> tuple[str, ...]:
    """The inference steps whose evidence tells role `declared` from role `inferred`."""
    groups = {_GROUPS[declared], _GROUPS[inferred]}
    if groups == {"terrain"}:
        return ("terrain",)
    if groups == {"rest"}:
        return ("gray",)
    if groups == {"colour"}:
        return ("green",) if "green" in (declared, inferred) else ("red_blue",)
    if groups == {"colour", "rest"}:
        return ("colour",)
    if groups == {"terrain", "colour"}:
        return ("terrain", "colour")
    return ("terrain",)  # terrain vs rest


def judge(inference: Inference, channels: Sequence[str]) -> Verdict:
    """The verdict on the band order `channels` (file band i holds channels[i])."""
    if inference.order is None:
        return Verdict("undetermined", (inference.reason,))
    differences, strong = [], False
    for band, (declared, inferred) in enumerate(zip(channels, inference.order)):
        if declared != inferred:
            differences.append(f"band {band + 1} looks like {inferred}, not {declared}")
            strong |= any(inference.strong[s] for s in _separating_steps(declared, inferred))
    if not differences:
        return Verdict("fits")
    return Verdict("contradicted" if strong else "uncertain", tuple(differences))


def score(ev: Evidence, channels: Sequence[str]) -> dict[str, float]:
    """The evidence as a band order `channels` reads it: how well its slope follows its DEM
    (rho), its colour bands agree (r), its gray is a colour mix and shows shading (R²)."""
    at = {role: channels.index(role) for role in bands.CHANNELS}
    colour = [at[c] for c in bands.RGB]
    corr = ev.median("corr")
    pairs = itertools.combinations(colour, 2)
    return {
        "rho": float(ev.median("slope_rho")[at["dem"], at["slope"]]),
        "colour_r": float(np.mean([corr[a, b] for a, b in pairs])),
        "gray_mix_r2": float(_nanmedian(ev.mix_r2(at["gray"], colour))),
        "gray_shading_r2": float(ev.median("shading_r2")[at["gray"], at["dem"]]),
    }


def profile_name(channels: Sequence[str]) -> str:
    """A known profile's name, or the comma-separated channel list."""
    for name, order in bands.PROFILES.items():
        if tuple(channels) == order:
            return name
    return ",".join(channels)


def fitting_profile(inference: Inference) -> str | None:
    """The known profile the inferred order is; else one that differs from it only where the
    evidence is weak; else the inferred order as a channel list (None when undetermined)."""
    if inference.order is None:
        return None
    for status in ("fits", "uncertain"):
        for name, order in bands.PROFILES.items():
            if judge(inference, order).status == status:
                return name
    return profile_name(inference.order)


# ----------------------------------------------------------------------------- the check


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything `python -m jaxswin.data inspect` prints."""

    sample: Sample
    evidence: Evidence
    inference: Inference
    verdicts: dict[str, Verdict]  # per known profile, plus a declared one
    scores: dict[str, dict[str, float]]  # the same, see score()

    def format(self, where: str) -> str:
        s = self.sample
        pixel = f"{s.pixel_size:g} m pixels" if s.pixel_size else "no projected georeference"
        lines = [f"{where}: {s.files} file(s), {s.files_read} read, {len(s.tiles)} tile(s)/"
                 f"window(s), {pixel}",
                 f"{'band':>4} {'dtype':>8} {'min':>11} {'max':>11} {'mean':>11} {'std':>11} "
                 f"{'nodata':>7}"]
        for row in band_stats(s):
            lines.append(f"{row['band']:>4} {row['dtype']:>8} {row['min']:>11.4g} "
                         f"{row['max']:>11.4g} {row['mean']:>11.4g} {row['std']:>11.4g} "
                         f"{row['nodata']:>7.2%}")
            if row["extremes"]:
                lines.append(f"     band {row['band']}: {row['extremes']} value(s) at float32's "
                             "extremes (+-3.4e38), an undeclared nodata value: counted as nodata")
        lines += self.inference.lines
        fits = fitting_profile(self.inference)
        if fits is None:
            lines.append(f"band order: undetermined ({self.inference.reason})")
        else:
            order = ",".join(self.inference.order)
            known = (f"profile {fits}" if fits == profile_name(self.inference.order) else
                     f"closest known profile {fits}, which differs only where the evidence is "
                     "weak" if fits in bands.PROFILES else "no known profile")
            lines.append(f"band order the evidence shows: {order} ({known})")
        lines.append("profiles (as each reads the bands: slope~|grad DEM| rho, colour r, gray "
                     "R² as colour mix / shading):")
        for name, verdict in self.verdicts.items():
            detail = f": {'; '.join(verdict.differences)}" if verdict.differences else ""
            got = self.scores[name]
            lines.append(f"  {name:<10} rho {got['rho']:5.2f}  r {got['colour_r']:5.2f}  R² "
                         f"{got['gray_mix_r2']:4.2f} / {got['gray_shading_r2']:5.2f}  "
                         f"{verdict.status}{detail}")
        return "\n".join(lines)


def inspect(sample: Sample, declared: Sequence[str] | None = None) -> Report:
    """Statistics, inference and a verdict for every known profile (and `declared`, given)."""
    ev = evidence(sample)
    inference = infer(ev)
    candidates = dict(bands.PROFILES)
    if declared is not None:
        candidates.setdefault(profile_name(declared), tuple(declared))
    return Report(sample, ev, inference,
                  {name: judge(inference, order) for name, order in candidates.items()},
                  {name: score(ev, order) for name, order in candidates.items()})


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"data.band_check={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def check(files: Sequence[Path], channels: Sequence[str], mode: str = "error",
          where: str = "the data", count: int = 32, option: str = "data.band_check"
          ) -> Verdict | None:
    """The band check training and prediction run on `count` of `files` before they start.

    See :func:`check_sample`; mode "off" reads nothing and returns None.
    """
    if _checked_mode(mode) == "off":
        return None
    return check_sample(read_sample(files, count), channels, mode, where, option)


def check_dataset(dataset: Dataset, mode: str = "error") -> Verdict | None:
    """:func:`check` on the labelled tiles of `dataset` in its declared band order."""
    if _checked_mode(mode) == "off":
        return None
    return check([sample.image for sample in dataset.samples], dataset.channels, mode,
                 f"the tiles under {dataset.root}")


def check_sample(sample: Sample, channels: Sequence[str], mode: str = "error",
                 where: str = "the data", option: str = "data.band_check") -> Verdict | None:
    """Judges the declared band order `channels` of `sample` (`where`: what it is, and `option`:
    how the command the user ran sets the mode, for messages).

    Strong evidence against it raises a DataError naming the profile that fits (mode "error")
    or logs that as a warning (mode "warn"); weak or missing evidence only logs. Returns the
    verdict (None when mode is "off").
    """
    if _checked_mode(mode) == "off":
        return None
    inference = infer(evidence(sample))
    verdict = judge(inference, channels)
    declared = profile_name(channels)
    if verdict.status == "fits":
        log.info("band check: %s fit band profile %s", where, declared)
        return verdict
    if verdict.status == "undetermined":
        log.warning("band check: cannot tell the band order of %s (%s); trusting band "
                    "profile %s", where, inference.reason, declared)
        return verdict
    fits = fitting_profile(inference)
    message = (f"band check: {where} do not fit band profile {declared} "
               f"({'; '.join(verdict.differences[:3])}); the bands fit {fits} "
               f"({inference.summary}); declare band profile {fits}, or set "
               f"{option} to \"warn\" or \"off\" to go on")
    if verdict.status == "contradicted" and mode == "error":
        raise DataError(message)
    log.warning("%s%s", message, " (weak evidence)" if verdict.status == "uncertain" else "")
    return verdict
