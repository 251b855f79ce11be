"""The embedded synthetic dataset: deterministic, georeferenced, MMLS-like, cached once, read-only."""

import hashlib

import numpy as np
import pytest
import rasterio

from jaxswin.data import bands, folds, open_dataset, synthetic
from jaxswin.data.normalize import Stats
from jaxswin.errors import DataError


def digest(root):
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        sha.update(str(path.relative_to(root)).encode())
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


def test_generation_is_deterministic_georeferenced_and_in_pbvs2026_order(tmp_path):
    a = synthetic.generate(tmp_path / "a", num_train=3, num_val=2)
    b = synthetic.generate(tmp_path / "b", num_train=3, num_val=2)
    images = sorted((a / "train" / "images").iterdir())
    assert [p.name for p in images] == ["Image_syn_0000.tif", "Image_syn_0001.tif", "Image_syn_0002.tif"]
    assert len(list((a / "val" / "masks").iterdir())) == 2
    with rasterio.open(images[1]) as src:
        tile = src.read()
        assert src.count == 7 and src.dtypes[0] == "float32"
        assert src.descriptions == bands.PROFILES["pbvs2026"]
        assert "Mars" in src.crs.to_wkt() and src.res == (synthetic.PIXEL_M, synthetic.PIXEL_M)
    with rasterio.open(b / "train" / "images" / images[1].name) as src:
        assert np.array_equal(tile, src.read())
    with rasterio.open(a / "train" / "masks" / "Mask_syn_0001.tif") as src:
        assert src.count == 1 and set(np.unique(src.read())) <= {0, 1}

    # The slope band is the DEM's gradient magnitude, in degrees.
    order = bands.PROFILES["pbvs2026"]
    dem, slope = tile[order.index("dem")], tile[order.index("slope")]
    grad_rows, grad_cols = np.gradient(dem.astype(np.float64), synthetic.PIXEL_M)
    np.testing.assert_allclose(slope, np.degrees(np.arctan(np.hypot(grad_rows, grad_cols))), atol=1e-3)


def test_tiles_have_mmls_like_statistics():
    channels, masks = zip(*(synthetic.tile(np.random.default_rng([0, i])) for i in range(48)))
    masks = np.stack(masks)
    assert 0.25 < masks.mean() < 0.45  # foreground ratio around 35 %
    assert (masks.reshape(48, -1).max(axis=1) == 0).mean() < 0.3  # most tiles hold a landslide
    on = masks.astype(bool)
    stack = {name: np.stack([c[name] for c in channels]) for name in bands.CHANNELS}
    # Blocky deposits are warmer than the dusty background; the RGB contrast is weak.
    assert stack["thermal"][on].mean() > stack["thermal"][~on].mean() + 50
    red_gap = abs(stack["red"][on].mean() - stack["red"][~on].mean()) / stack["red"].std()
    assert red_gap < 0.5
    assert np.isfinite(np.stack(list(stack.values()))).all()


def test_default_dataset_is_resized_to_another_model_size_as_any_data(tmp_path, monkeypatch):
    """model.img_size other than the synthetic tiles' follows data.resize, as with --data."""
    monkeypatch.setenv("JAXSWIN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="tile is 128x128 pixels; expected 64x64"):
        open_dataset(None, "pbvs2026", 64).load()
    images, masks = open_dataset(None, "pbvs2026", 64, resize=True).load()
    assert images.shape[1:] == (64, 64, 7) and masks.shape[1:] == (64, 64)


def test_default_dataset_is_cached_and_learnable_and_never_written_to(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSWIN_CACHE", str(tmp_path / "cache"))
    dataset = open_dataset(None, "pbvs2026")
    assert dataset.root.parent == tmp_path / "cache"
    assert len(dataset.indices("train")) == synthetic.NUM_TRAIN
    assert len(dataset.indices("val")) == synthetic.NUM_VAL
    before = digest(dataset.root)
    stamp = dataset.root.stat().st_mtime_ns
    again = open_dataset("", "pbvs2026")  # a second use finds the cache
    assert again.root == dataset.root and dataset.root.stat().st_mtime_ns == stamp
    images, masks = again.load()
    assert digest(dataset.root) == before
    assert not [p for p in (tmp_path / "cache").iterdir() if p != dataset.root]  # no leftovers

    # Learnable: a per-pixel linear model on the z-scored bands, fitted on one fold, beats the
    # best constant guess on the held-out tiles by a wide margin.
    train, val = folds.split(again, 0)
    stats = Stats.fit(images[train], masks[train])

    def features(rows):
        z = stats.apply(images[rows]).reshape(-1, 7)
        return np.concatenate([z, np.ones((len(z), 1), np.float32)], 1)

    weights, *_ = np.linalg.lstsq(features(train[:48]), masks[train[:48]].reshape(-1), rcond=None)
    predicted = features(val) @ weights > 0.5
    truth = masks[val].reshape(-1).astype(bool)
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.45 and (predicted == truth).mean() > max(truth.mean(), 1 - truth.mean()) + 0.1


def test_an_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="JAXSWIN_CACHE"):
        synthetic.ensure(blocker / "cache")
