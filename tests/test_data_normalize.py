"""Percentile scaling, training-fold z-score statistics and w+, against numpy formulas."""

import json

import numpy as np
import pytest

from jaxswin.data import bands
from jaxswin.data.normalize import EPS, Stats, percentile_scale, split_streams
from jaxswin.errors import DataError, UserError


def reference_scale(band: np.ndarray) -> np.ndarray:
    """Clip one band to its [P1, P99] over finite pixels, rescale to [0, 1]; else 0."""
    valid = band[np.isfinite(band)].astype(np.float64)
    if valid.size == 0:
        return np.zeros(band.shape)
    low, high = np.quantile(valid, 0.01), np.quantile(valid, 0.99)
    if high <= low:
        return np.zeros(band.shape)
    return np.where(np.isfinite(band), (np.clip(band, low, high) - low) / (high - low), 0.0)


def test_percentile_scale_matches_numpy_per_band():
    rng = np.random.default_rng()
    # Bands on very different scales and dtypes, as DEM, thermal inertia and RGB are.
    image = np.stack(
        [rng.normal(-3000, 800, (40, 50)), rng.gamma(2.0, 100, (40, 50)),
         rng.integers(0, 255, (40, 50)), rng.random((40, 50))], axis=-1
    ).astype(np.float32)
    scaled = percentile_scale(image)
    assert scaled.dtype == np.float32 and scaled.shape == image.shape
    for c in range(image.shape[-1]):
        np.testing.assert_allclose(scaled[..., c], reference_scale(image[..., c]), atol=1e-6)
    assert scaled.min() == 0.0 and scaled.max() == 1.0


def test_constant_and_invalid_bands_become_zero_never_nan():
    rng = np.random.default_rng()
    image = rng.random((30, 30, 4)).astype(np.float32)
    image[..., 1] = 7.5  # constant
    image[..., 2] = np.nan  # all nodata
    holes = rng.random((30, 30)) < 0.2
    image[holes, 3] = np.nan
    scaled = percentile_scale(image)
    assert np.isfinite(scaled).all()
    assert not scaled[..., 1].any() and not scaled[..., 2].any()
    np.testing.assert_allclose(scaled[..., 3], reference_scale(image[..., 3]), atol=1e-6)
    np.testing.assert_allclose(scaled[..., 0], reference_scale(image[..., 0]), atol=1e-6)
    assert not scaled[holes, 3].any()



@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_an_image_without_any_valid_pixel_scales_to_zero(bad):
    # A window wholly inside a scene's nodata collar: no band has a value to take P1/P99 of.
    image = np.full((16, 24, 7), bad, np.float32)
    scaled = percentile_scale(image)
    assert scaled.shape == image.shape and scaled.dtype == np.float32 and not scaled.any()
    # One valid pixel in some bands: those bands scale (a single value: constant, so 0) too.
    image[3, 5, :3] = np.random.default_rng().normal(size=3)
    assert not percentile_scale(image).any()

def test_stats_use_only_the_given_tiles():
    rng = np.random.default_rng()
    images = rng.random((12, 8, 8, 7)).astype(np.float32) * np.arange(1, 8, dtype=np.float32)
    masks = (rng.random((12, 8, 8)) < 0.3).astype(np.uint8)
    train = rng.permutation(12)[:9]
    stats = Stats.fit(images[train], masks[train])
    pixels = images[train].reshape(-1, 7).astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0), rtol=1e-7)
    positives = masks[train].sum()
    assert stats.pos_weight == pytest.approx((masks[train].size - positives) / positives)
    assert stats.channels == bands.CHANNELS
    everything = Stats.fit(images, masks)
    assert not np.allclose(everything.mean, stats.mean)

    z = stats.apply(images)
    assert z.dtype == np.float32
    expected = (images - np.array(stats.mean)) / (np.array(stats.std) + EPS)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[train].reshape(-1, 7).mean(axis=0, dtype=np.float64), 0, atol=1e-5)


def test_stats_without_landslide_pixels_is_a_data_error():
    with pytest.raises(DataError, match="no landslide pixels"):
        Stats.fit(np.zeros((2, 4, 4, 7), np.float32), np.zeros((2, 4, 4), np.uint8))


def test_stats_round_trip_and_bad_files_name_the_file(tmp_path):
    rng = np.random.default_rng()
    stats = Stats(bands.CHANNELS, tuple(rng.random(7)), tuple(rng.random(7) + 0.1), 1.7)
    stats.save(tmp_path / "run" / "stats.json")
    assert Stats.load(tmp_path / "run" / "stats.json") == stats

    for name, text in [
        ("missing.json", None),
        ("corrupt.json", "{not json"),
        ("incomplete.json", json.dumps({"channels": list(bands.CHANNELS), "mean": [0.0] * 7})),
        ("reordered.json", json.dumps({"channels": list(reversed(bands.CHANNELS)),
                                       "mean": [0.0] * 7, "std": [1.0] * 7, "pos_weight": 1.0})),
    ]:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(UserError) as err:
            Stats.load(path)
        assert str(path) in str(err.value)


def test_split_streams_gives_rgb_and_the_papers_aux_order():
    image = np.arange(7, dtype=np.float32)[None, None]  # channel c holds value c
    rgb, aux = split_streams(image)
    assert rgb.ravel().tolist() == [bands.CHANNELS.index(c) for c in ("red", "green", "blue")]
    assert aux.ravel().tolist() == [bands.CHANNELS.index(c) for c in ("thermal", "slope", "dem", "gray")]
