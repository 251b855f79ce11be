"""The paper's two-stage input normalisation (§4.1) and the positive-class weight.

Stage 1, per tile and band: clip to the band's [P1, P99] and rescale to [0, 1]. Stage 2, per
channel: z-score with the mean and standard deviation of the training fold's tiles alone,
x' = (x - mu_c) / (sigma_c + eps). The statistics travel with a run (stats.json) so that
prediction normalises exactly as training did.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxswin.data import bands
from jaxswin.errors import DataError, UserError

EPS = 1e-6  # the paper's epsilon in (x - mu) / (sigma + eps)
_CHUNK = 64  # tiles per step when summing, to keep float64 temporaries small


def percentile_scale(image: np.ndarray) -> np.ndarray:
    """Clips each band of an (H, W, C) image to its [P1, P99] and rescales it to [0, 1].

    A constant band becomes 0. NaN pixels (nodata) are left out of the percentiles and set to 0
    (the band's low end), so the result is always finite, also for an image with no valid pixel
    (all 0).
    """
    image = np.asarray(image, np.float32)
    valid = np.isfinite(image)
    pixels = image.astype(np.float64)
    if valid.all():
        low, high = np.percentile(pixels, [1, 99], axis=(0, 1))
    else:
        pixels[~valid] = np.nan
        columns = pixels.reshape(-1, image.shape[-1])
        has_values = valid.reshape(columns.shape).any(axis=0)
        low, high = np.zeros((2, image.shape[-1]))
        if has_values.any():  # nanpercentile of no band at all is an empty array, not 2 rows
            low[has_values], high[has_values] = np.nanpercentile(
                columns[:, has_values], [1, 99], axis=0
            )
    span = high - low
    scaled = (np.clip(pixels, low, high) - low) / np.where(span > 0, span, 1.0)
    scaled[..., span <= 0] = 0.0
    scaled[~valid] = 0.0
    return scaled.astype(np.float32)


def split_streams(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 7) canonical channels -> the RGB stream (..., 3) and the AUX stream (..., 4)."""
    return images[..., : len(bands.RGB)], images[..., len(bands.RGB) :]


@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-channel mean and std (canonical order) and w+ = N_neg / N_pos of a training fold."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pos_weight: float

    @classmethod
    def fit(cls, images: np.ndarray, masks: np.ndarray) -> Stats:
        """Statistics of the given (already percentile-scaled) tiles only: (N, H, W, 7), (N, H, W)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != len(bands.CHANNELS) or not len(images):
            raise ValueError(f"expected (N, H, W, 7) training images, got {images.shape}")
        total = np.zeros(images.shape[-1])
        total_sq = np.zeros(images.shape[-1])
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK].astype(np.float64)
            total += chunk.sum(axis=(0, 1, 2))
            total_sq += np.square(chunk).sum(axis=(0, 1, 2))
        count = images[..., 0].size
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        positives = int(np.count_nonzero(masks))
        if positives == 0:
            raise DataError(
                "the training tiles contain no landslide pixels: the positive-class weight "
                "N_neg / N_pos is undefined (check the masks, or use more tiles)"
            )
        return cls(
            channels=bands.CHANNELS,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            pos_weight=(np.size(masks) - positives) / positives,
        )

    def apply(self, images):
        """z-scores float32 (..., 7) percentile-scaled images (numpy, or JAX arrays under jit)."""
        mean = np.asarray(self.mean, np.float32)
        scale = np.float32(1.0) / (np.asarray(self.std, np.float32) + np.float32(EPS))
        return (images - mean) * scale

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"{path}: no such normalisation stats file (a training run writes it as "
                "best/stats.json beside the weights)"
            )
        try:
            table = json.loads(path.read_text())
            stats = cls(
                channels=tuple(table["channels"]),
                mean=tuple(float(v) for v in table["mean"]),
                std=tuple(float(v) for v in table["std"]),
                pos_weight=float(table["pos_weight"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a valid stats file ({type(err).__name__}: {err})") from None
        if stats.channels != bands.CHANNELS or not len(stats.mean) == len(stats.std) == 7:
            raise UserError(
                f"{path}: stats must list the channels {', '.join(bands.CHANNELS)} with one "
                "mean and std each"
            )
        # NaN statistics or a zero std would turn every pixel NaN: masks all nodata, no error.
        bad = [f"mean of {c} = {m}" for c, m in zip(stats.channels, stats.mean)
               if not np.isfinite(m)]
        bad += [f"std of {c} = {s}" for c, s in zip(stats.channels, stats.std)
                if not (np.isfinite(s) and s > 0)]
        bad += [f"pos_weight = {stats.pos_weight}"] if not np.isfinite(stats.pos_weight) else []
        if bad:
            raise UserError(
                f"{path}: {', '.join(bad)}; stats must be finite, every std above 0 (the file "
                "is damaged: copy it again from the training run, or retrain)"
            )
        return stats
