"""Cross-validation folds: stratified, deterministic, disjoint and covering; the official split."""

import numpy as np
import pytest
import rasterio

from jaxswin.data import bands, folds
from jaxswin.data.dataset import scan
from jaxswin.errors import ConfigError

SIZE = 8


def test_assign_is_balanced_deterministic_and_stratified():
    rng = np.random.default_rng()
    fractions = rng.beta(0.5, 0.8, 203)
    seed = int(rng.integers(1 << 30))
    fold_of = folds.assign(fractions, 5, seed)
    assert np.array_equal(fold_of, folds.assign(fractions, 5, seed))
    assert not np.array_equal(fold_of, folds.assign(fractions, 5, seed + 1))
    sizes = np.bincount(fold_of, minlength=5)
    assert sizes.sum() == 203 and sizes.max() - sizes.min() <= 1
    # Stratified: each fold's mean foreground fraction is far closer to the overall mean than a
    # random split's (whose spread is ~std/sqrt(40) = 0.05 here).
    means = np.array([fractions[fold_of == k].mean() for k in range(5)])
    assert np.abs(means - fractions.mean()).max() < 0.02
    # and holds one tile of every run of 5 in foreground order.
    runs = fold_of[np.argsort(fractions, kind="stable")][:200].reshape(40, 5)
    assert all(sorted(run) == list(range(5)) for run in runs)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=len(array),
                       dtype=array.dtype, transform=rasterio.Affine.scale(50.0, -50.0)) as dst:
        dst.write(array)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"train": 17, "val": 6, "test": 4}
    for split, count in counts.items():
        for i in range(count):
            _write(tmp_path / split / "images" / f"Image_{split}{i}.tif",
                   rng.random((7, SIZE, SIZE), dtype=np.float32))
            _write(tmp_path / split / "masks" / f"Mask_{split}{i}.tif",
                   (rng.random((1, SIZE, SIZE)) < rng.random()).astype(np.uint8))
    return scan(tmp_path, bands.CHANNELS, SIZE)


def test_folds_cover_train_and_val_never_test(dataset):
    pool = set(dataset.indices("train", "val").tolist())
    held_out = []
    for k in range(5):
        train, val = folds.split(dataset, k, 5, seed=42)
        assert not set(train) & set(val)
        assert set(train) | set(val) == pool
        held_out += val.tolist()
        again = folds.split(dataset, k, 5, seed=42)
        assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert sorted(held_out) == sorted(pool)  # each tile held out exactly once


def test_official_split_and_bad_folds(dataset, tmp_path):
    train, val = folds.split(dataset, "official")
    assert {dataset.samples[i].split for i in train} == {"train"} and len(train) == 17
    assert {dataset.samples[i].split for i in val} == {"val"} and len(val) == 6
    for fold in (5, -1, "3", 2.0, True):
        with pytest.raises(ConfigError, match="--fold"):
            folds.split(dataset, fold, 5)
    with pytest.raises(ConfigError, match="num_folds"):
        folds.split(dataset, 0, 1)
    with pytest.raises(ConfigError, match="fold_seed"):
        folds.split(dataset, 0, 5, seed=-3)
    flat = scan(tmp_path / "train", bands.CHANNELS, SIZE)  # one split only
    with pytest.raises(ConfigError, match="official"):
        folds.split(flat, "official")
