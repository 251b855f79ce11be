"""`python -m jaxswin.evaluate`: pairing by tile id and set-level scores against numpy."""

import json

import numpy as np
import pytest
import rasterio

from jaxswin import evaluate


def _write_mask(path, array, nodata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = array.shape
    transform = rasterio.Affine(200.0, 0.0, 4000.0, 0.0, -200.0, 2000.0)
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=1, dtype="uint8",
        crs="EPSG:4326", transform=transform, nodata=nodata,
    ) as dst:
        dst.write(array.astype(np.uint8), 1)


def _np_scores(pred, truth):
    """Pooled over all pixels; both tiles sets here contain foreground and background."""
    tp, fp = np.sum(pred & truth), np.sum(pred & ~truth)
    fn, tn = np.sum(~pred & truth), np.sum(~pred & ~truth)
    return {
        "miou": (tp / (tp + fp + fn) + tn / (tn + fn + fp)) / 2,
        "iou_fg": tp / (tp + fp + fn),
        "iou_bg": tn / (tn + fn + fp),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "accuracy": (tp + tn) / pred.size,
    }


@pytest.fixture
def tile_sets(tmp_path):
    rng = np.random.default_rng()
    preds, truths = [], []
    for i in range(4):
        truth = rng.random((16, 12)) < (0.0 if i == 0 else 0.4)  # tile 0: no landslide at all
        pred = truth ^ (rng.random(truth.shape) < 0.2)
        _write_mask(tmp_path / "pred" / f"Image_{i}.tif", pred)
        _write_mask(tmp_path / "masks" / f"Mask_{i}.tif", truth)
        preds.append(pred)
        truths.append(truth)
    return tmp_path, np.stack(preds), np.stack(truths)


def test_scores_pool_every_pixel_of_the_set(tile_sets, capsys):
    root, preds, truths = tile_sets
    evaluate.main(["--pred", str(root / "pred"), "--masks", str(root / "masks"), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores.pop("tiles") == 4
    expected = _np_scores(preds, truths)
    assert set(scores) == set(expected)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-12), key


def test_table_names_every_score(tile_sets, capsys):
    root, preds, truths = tile_sets
    evaluate.main(["--pred", str(root / "pred"), "--masks", str(root / "masks")])
    table = capsys.readouterr().out
    miou = _np_scores(preds, truths)["miou"]
    for label in ("mIoU", "IoU_fg", "IoU_bg", "F1", "Precision", "Recall"):
        assert label in table
    assert f"mIoU       {miou:.4f}" in table


def test_empty_foreground_set_scores_by_the_convention(tmp_path, capsys):
    empty = np.zeros((8, 8), bool)
    _write_mask(tmp_path / "pred" / "Image_a.tif", empty)
    _write_mask(tmp_path / "masks" / "Mask_a.tif", empty)
    evaluate.main(["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["iou_fg"] == scores["precision"] == scores["recall"] == scores["miou"] == 1.0


def test_predicted_masks_score_their_nodata_as_background(tmp_path, capsys):
    # As jaxswin.predict writes them: 1 landslide, 0 not, 255 declared as the file's nodata.
    _write_mask(tmp_path / "pred" / "a.tif", np.array([[1, 0, 255, 255]]), nodata=255)
    _write_mask(tmp_path / "masks" / "Mask_a.tif", np.array([[1, 0, 1, 0]]))
    evaluate.main(["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5 and scores["accuracy"] == 0.75


@pytest.mark.parametrize("remove", ["pred", "masks"])
def test_missing_pairs_are_listed(tile_sets, capsys, remove):
    root, _, _ = tile_sets
    for i in (1, 3):
        (root / remove / f"{'Image' if remove == 'pred' else 'Mask'}_{i}.tif").unlink()
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--pred", str(root / "pred"), "--masks", str(root / "masks")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "2 tile(s): 1, 3" in err and ("no mask" if remove == "masks" else "no prediction") in err


def test_size_mismatch_is_an_error(tile_sets, capsys):
    root, _, _ = tile_sets
    _write_mask(root / "masks" / "Mask_2.tif", np.zeros((8, 8), bool))
    with pytest.raises(SystemExit):
        evaluate.main(["--pred", str(root / "pred"), "--masks", str(root / "masks")])
    assert "Image_2.tif" in capsys.readouterr().err
