"""The challenge's layout: a split folder with images/ and no masks/ (the test split) is
unlabelled, never an error; training leaves it aside and says so; the official split needs a
validation split and says how to get one. Synthetic tiles laid out that way, and the real
MMLSv2 (../shared/datasets/mmls_v2) when present."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from jaxswin.data import bands, folds, synthetic
from jaxswin.data.dataset import scan
from jaxswin.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
MMLS_V2 = ROOT.parent / "shared" / "datasets" / "mmls_v2"
SIZE = 64


def write_tile(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[-1], height=array.shape[-2],
                       count=len(array), dtype=array.dtype,
                       transform=rasterio.Affine.scale(232.0, -232.0)) as dst:
        dst.write(array)


@pytest.fixture(scope="module")
def challenge(tmp_path_factory):
    """train/images + train/masks (20 tiles) and test/images only (3 tiles), as the challenge."""
    root = tmp_path_factory.mktemp("challenge")
    rng = np.random.default_rng(5)
    for split, count in (("train", 20), ("test", 3)):
        for i in range(count):
            channels, mask = synthetic.tile(rng, SIZE)
            name = f"col{i:05d}_row00007.tif"
            image = np.stack([channels[c] for c in bands.PROFILES["pbvs2026"]]).astype(np.float32)
            write_tile(root / split / "images" / name, image)
            if split == "train":
                write_tile(root / split / "masks" / name, mask[None].astype(np.uint8))
    return root


def test_a_split_without_masks_is_unlabelled_and_left_aside(challenge):
    dataset = scan(challenge, bands.PROFILES["pbvs2026"], SIZE)
    assert dataset.splits == ("train",) and len(dataset) == 20
    assert dataset.unlabelled == {"test": 3}
    assert "left aside 3 unlabelled tiles (3 in test/" in dataset.describe_unlabelled()
    images, masks = dataset.load()
    assert images.shape == (20, SIZE, SIZE, 7) and masks.shape == (20, SIZE, SIZE)
    for method in folds.METHODS:  # folds pool the labelled tiles only
        train, val = folds.split(dataset, 0, 5, 42, method)
        assert len(val) == 4 and not set(train) & set(val)
        assert set(train) | set(val) <= set(range(20))
        # Random folds use every labelled tile; spatial ones drop the buffer around the held out.
        assert len(train) + len(val) == 20 if method in folds.RANDOM_METHODS else len(train) < 16


def test_official_fold_without_a_validation_split_names_the_fix(challenge):
    dataset = scan(challenge, bands.PROFILES["pbvs2026"], SIZE)
    with pytest.raises(ConfigError, match=r"--fold official.*--fold 0.*val/images and val/masks"):
        folds.split(dataset, "official")


def test_only_unlabelled_tiles_is_a_clear_error(challenge):
    with pytest.raises(DataError, match="no labelled tiles.*test has 3 images but no masks/"):
        scan(challenge / "test", bands.PROFILES["pbvs2026"], SIZE)


def test_train_leaves_the_test_split_aside_and_predict_takes_it(challenge, tmp_path):
    env = dict(os.environ, JAXSWIN_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    train = subprocess.run(
        [sys.executable, "-m", "jaxswin.train", "--fold", "0", "--preset", "tiny",
         "--data", str(challenge), "--workdir", str(tmp_path / "run"),
         "--set", f"model.img_size={SIZE}", "--set", "train.epochs=1",
         "--set", "train.max_steps_per_epoch=2", "--set", "train.batch_size=4",
         "--set", "train.eval_batch_size=4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "left aside 3 unlabelled tiles (3 in test/" in train.stderr
    predict = subprocess.run(
        [sys.executable, "-m", "jaxswin.predict", "--checkpoint", str(tmp_path / "run"),
         "--input", str(challenge / "test" / "images"), "--output", str(tmp_path / "masks")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert predict.returncode == 0, predict.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "masks").glob("*.tif"))
    assert written == sorted(p.name for p in (challenge / "test" / "images").glob("*.tif"))
    official = subprocess.run(
        [sys.executable, "-m", "jaxswin.train", "--fold", "official", "--preset", "tiny",
         "--data", str(challenge), "--workdir", str(tmp_path / "official")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert official.returncode != 0 and "Traceback" not in official.stderr
    assert "val/images and val/masks" in official.stderr


@pytest.mark.skipif(not MMLS_V2.is_dir(), reason=f"the real MMLSv2 is not at {MMLS_V2}")
def test_real_mmls_v2_has_465_labelled_tiles_and_an_unlabelled_test_split():
    dataset = scan(MMLS_V2, bands.PROFILES["pbvs2026"], 128)
    assert dataset.splits == ("train",) and len(dataset) == 465
    assert dataset.unlabelled == {"test": 16}
    names = [s.image.name for s in dataset.samples]
    assert names == sorted(names)  # path order, as the authors' KFold sees them
    train, val = folds.split(dataset, 0, 5, 42, "kfold")
    assert (len(train), len(val)) == (372, 93)
    assert np.array_equal(val, np.flatnonzero(folds.kfold(465, 5, 42) == 0))
    with pytest.raises(ConfigError, match="official"):
        folds.split(dataset, "official")
