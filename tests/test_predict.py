"""`python -m jaxswin.predict` and the Ensemble API on the tiny preset with random weights."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import rasterio

from jaxswin import config, inference, maps, models, predict, weights
from jaxswin.data import bands, io, normalize
from jaxswin.errors import ConfigError, UserError

SIZE = 128  # the tiny preset's tile size
THRESHOLD = 0.51
MARS_CRS = "+proj=eqc +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +R=3396190 +units=m +no_defs"


def _write_tif(path, array_hwc, crs=MARS_CRS, origin=(0.0, 0.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, count = array_hwc.shape
    transform = rasterio.Affine(200.0, 0.0, origin[0], 0.0, -200.0, origin[1])
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=count,
        dtype=array_hwc.dtype.name, crs=crs, transform=transform,
    ) as dst:
        dst.write(np.moveaxis(array_hwc, -1, 0))


def _scene(rng, height, width):
    """Seven raw bands with broad structure and noise, canonical order."""
    yy, xx = np.mgrid[0:height, 0:width] / 37.0
    base = np.sin(yy[..., None] * rng.uniform(0.5, 2, 7) + xx[..., None] * rng.uniform(0.5, 2, 7))
    return (base * rng.uniform(1, 100, 7) + rng.normal(0, 3, (height, width, 7))).astype(np.float32)


def _to_profile(image, profile):
    """Canonical (H, W, 7) -> the band order of `profile` as stored in files."""
    return image[..., [bands.CHANNELS.index(c) for c in bands.PROFILES[profile]]]


def _digest(folder):
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _random_variables(model_cfg, rng):
    """Random weights of the model's shapes, without compiling its init (a minute on CPU)."""
    module = models.build(model_cfg)
    shapes = jax.eval_shape(lambda: models.init(module, model_cfg, jax.random.key(0)))

    def fill(path, leaf):
        noise = rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)
        positive = jax.tree_util.keystr(path).endswith(("['var']", "['scale']"))
        return 1.0 + np.abs(noise) if positive else noise  # BatchNorm variances, norm scales

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training workdir with three folds holding the same random tiny model."""
    root = tmp_path_factory.mktemp("run")
    cfg = config.load("tiny")
    rng = np.random.default_rng(0)
    variables = _random_variables(cfg.model, rng)
    stats = normalize.Stats(
        channels=bands.CHANNELS,
        mean=tuple(rng.uniform(0.3, 0.6, 7).tolist()),
        std=tuple(rng.uniform(0.15, 0.3, 7).tolist()),
        pos_weight=1.86,
    )
    for fold in range(3):
        best = root / f"fold{fold}" / "best"
        weights.save(best / inference.WEIGHTS, variables)
        for folder in (best, best.parent):  # as jaxswin.train writes them
            (folder / inference.CONFIG).write_text(config.to_toml(cfg))
            stats.save(folder / inference.STATS)
    return root


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Three georeferenced tiles in the training profile (pbvs2026), their masks and images."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng()
    images = {}
    for i in range(3):
        image = _scene(rng, SIZE, SIZE)
        stored = _to_profile(image, "pbvs2026")
        _write_tif(root / "images" / f"Image_{i}.tif", stored, origin=(1e5 * i, 5e4))
        truth = (rng.random((SIZE, SIZE, 1)) < 0.35).astype(np.uint8)
        _write_tif(root / "masks" / f"Mask_{i}.tif", truth, origin=(1e5 * i, 5e4))
        images[f"Image_{i}.tif"] = image
    return root, images


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform, src.dtypes[0]


def _predict(checkpoint, input_path, output, *options):
    predict.main(["--checkpoint", checkpoint, "--input", input_path, "--output", output, *options])


def _refused(capsys, *args):
    """Exit status and stderr of a predict command expected to fail."""
    with pytest.raises(SystemExit) as exit_info:
        _predict(*map(str, args))
    return exit_info.value.code, capsys.readouterr().err


def _counts(pred, truth):
    """[tp, fp, fn, tn] of boolean arrays."""
    return [np.sum(p & t) for p in (pred, ~pred) for t in (truth, ~truth)]


def test_finds_the_folds_of_a_run(run_dir):
    assert inference.best_folders(run_dir) == [run_dir / f"fold{k}" / "best" for k in range(3)]
    assert inference.best_folders(run_dir / "fold1") == [run_dir / "fold1" / "best"]
    assert inference.best_folders(run_dir / "fold1" / "best") == [run_dir / "fold1" / "best"]


def test_cli_writes_georeferenced_masks_probabilities_previews_and_scores(
    run_dir, tiles, tmp_path, capsys
):
    root, images = tiles
    before = _digest(root)
    out = tmp_path / "out"
    _predict(
        str(run_dir / "fold0"), str(root / "images"), str(out), "--tta", "none", "--save-prob",
        "--prob-dtype", "float32", "--preview", "--masks", str(root / "masks"), "--batch-size", "2",
    )  # 3 tiles in batches of 2: the last one is padded
    assert _digest(root) == before

    ensemble = inference.load_ensemble([run_dir / "fold0"], "none", batch_size=2)  # compiled above
    names = sorted(images)
    scaled = np.stack([normalize.percentile_scale(images[n]) for n in names])
    expected = ensemble.predict_proba(scaled)
    counts = []
    for name, want in zip(names, expected):
        mask, crs, transform, dtype = _read(out / name)
        _, src_crs, src_transform, _ = _read(root / "images" / name)
        assert (crs, transform) == (src_crs, src_transform) and crs is not None
        prob, prob_crs, prob_transform, prob_dtype = _read(out / "prob" / name)
        assert (prob_crs, prob_transform) == (src_crs, src_transform)
        assert (dtype, prob_dtype) == ("uint8", "float32")
        # One tile is one window: the scene path gives exactly the tile prediction.
        np.testing.assert_allclose(prob, want, atol=1e-6)
        np.testing.assert_array_equal(mask, (prob > THRESHOLD).astype(np.uint8))
        preview = out / "preview" / name.replace(".tif", ".png")
        assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        truth = io.read_mask(root / "masks" / name.replace("Image", "Mask")).astype(bool)
        pred = mask.astype(bool)
        counts.append(_counts(pred, truth))
    tp, fp, fn, tn = np.sum(counts, axis=0)
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["iou_fg"] == pytest.approx(tp / (tp + fp + fn))
    assert scores["miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2)
    assert "mIoU" in capsys.readouterr().out


def test_ensemble_of_copies_equals_the_single_model(run_dir, tiles):
    _, images = tiles
    batch = np.stack([normalize.percentile_scale(im) for im in images.values()])
    single = inference.load_ensemble([run_dir / "fold0"], "none", batch_size=2).predict_proba(batch)
    three = inference.load_ensemble([run_dir], "none", batch_size=2)
    assert len(three.members) == 3
    np.testing.assert_allclose(three.predict_proba(batch), single, atol=1e-6)
    assert single.shape == (3, SIZE, SIZE) and np.all((single >= 0) & (single <= 1))


def test_bf16_ensemble_is_close_to_fp32(run_dir, tiles, tmp_path, capsys):
    _, images = tiles
    batch = np.stack([normalize.percentile_scale(im) for im in images.values()])
    full = inference.load_ensemble([run_dir / "fold0"], "hflip", 2).predict_proba(batch)
    half = inference.load_ensemble([run_dir / "fold0"], "hflip", 2, "bf16")
    assert half.precision == "bf16"
    half = half.predict_proba(batch)
    assert half.dtype == np.float32 and 0 < np.abs(half - full).max() < 0.05
    # The CLI option reaches the ensemble (the log line names the precision).
    root, _ = tiles
    _predict(str(run_dir / "fold0"), str(root / "images" / "Image_0.tif"), str(tmp_path / "out"),
             "--tta", "none", "--precision", "bf16")
    assert ", bf16," in capsys.readouterr().err
    assert (tmp_path / "out" / "Image_0.tif").is_file()
    with pytest.raises(ConfigError, match="'half'.*predict.precision"):
        inference.load_ensemble([run_dir / "fold0"], "none", 2, "half")


def test_bands_are_matched_by_name(run_dir, tiles, tmp_path):
    # The same tiles stored in MMLS v2 band order, read with --bands mmlsv2, give the same maps.
    root, images = tiles
    for name, image in images.items():
        _write_tif(tmp_path / "v2" / name, _to_profile(image, "mmlsv2"))
    model = str(run_dir / "fold0")
    options = ["--tta", "none", "--save-prob", "--prob-dtype", "float32", "--batch-size", "2"]
    _predict(model, str(root / "images"), str(tmp_path / "a"), *options)
    _predict(model, str(tmp_path / "v2"), str(tmp_path / "b"), *options, "--bands", "mmlsv2")
    for name in images:
        want = _read(tmp_path / "a" / "prob" / name)[0]
        np.testing.assert_allclose(_read(tmp_path / "b" / "prob" / name)[0], want, atol=1e-6)


def test_scenes_of_any_size_keep_their_size_and_georeference(run_dir, tmp_path):
    rng = np.random.default_rng()
    shapes = {"big.tif": (SIZE + 41, 2 * SIZE - 7), "small.tif": (SIZE // 2 + 3, SIZE - 20)}
    for i, (name, (h, w)) in enumerate(shapes.items()):
        stored = _to_profile(_scene(rng, h, w), "pbvs2026")
        _write_tif(tmp_path / "in" / name, stored, origin=(7e3 * i, 3e3))
    _predict(
        str(run_dir / "fold0"), str(tmp_path / "in"), str(tmp_path / "out"),
        "--tta", "none", "--save-prob", "--batch-size", "2",
    )
    for name, shape in shapes.items():
        mask, crs, transform, _ = _read(tmp_path / "out" / name)
        prob = _read(tmp_path / "out" / "prob" / name)[0]
        _, src_crs, src_transform, _ = _read(tmp_path / "in" / name)
        assert mask.shape == prob.shape == shape and (crs, transform) == (src_crs, src_transform)
        assert prob.dtype == np.uint8 and prob.max() <= 254  # round(254 p); no nodata here
        clear = np.abs(prob / 254.0 - THRESHOLD) > 0.5 / 254  # off the rounding's reach
        np.testing.assert_array_equal(mask[clear], prob[clear] / 254.0 > THRESHOLD)


def test_windows_blend_back_into_the_scene():
    # Windows that agree on their overlaps (crops of one map) must reassemble that map exactly,
    # strip by strip, whatever the overlap pattern; padding beyond the scene is cropped off.
    rng = np.random.default_rng()
    tile = 16
    blend = inference.blend_window(tile)
    for height, width in [(16, 16), (40, 23), (9, 30), (5, 7), (61, 17)]:
        truth = rng.random((height, width)).astype(np.float32)
        reader = inference.ArrayReader(np.zeros((height, width, 7), np.float32))
        strip = inference._Strip(None, reader, tile, lambda _, r: inference.ArraySink(r.height, r.width))
        covered = np.zeros((height, width), int)
        for k, y in enumerate(strip.rows):
            for x in strip.columns:
                window = np.full((tile, tile), -1.0, np.float32)  # padding: must not leak in
                crop = truth[y : y + tile, x : x + tile]
                window[: crop.shape[0], : crop.shape[1]] = crop
                covered[y : y + tile, x : x + tile] += 1
                strip.add(window, y, x, blend)
            assert not strip.done
            strip.finish_row(k, np.ones((min(tile, height - y), width), bool))
        assert strip.done and covered.min() >= 1
        np.testing.assert_allclose(strip.sink.close(), truth, rtol=1e-5)


def test_two_devices_give_the_same_probabilities(run_dir, tiles, tmp_path):
    _, images = tiles
    batch = np.stack([normalize.percentile_scale(im) for im in images.values()])
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import sys, jax, numpy as np; from jaxswin import inference; "
        "e = inference.load_ensemble([sys.argv[1]], 'none', batch_size=3); "
        "assert jax.device_count() == 2 and e.batch_size == 4; "
        "np.save(sys.argv[3], e.predict_proba(np.load(sys.argv[2])))"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    files = [str(run_dir / "fold0"), str(tmp_path / "batch.npy"), str(tmp_path / "two.npy")]
    subprocess.run(
        [sys.executable, "-c", script, *files],
        check=True, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    one = inference.load_ensemble([run_dir / "fold0"], "none").predict_proba(batch)
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), one, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_output_inside_input_is_refused(run_dir, tiles, capsys):
    root, _ = tiles
    before = _digest(root)
    for output in (root / "images", root / "images" / "pred"):
        code, err = _refused(capsys, run_dir, root / "images", output)
        assert code == 2 and "--output" in err and "--input" in err
    code, err = _refused(capsys, run_dir, root / "images" / "Image_0.tif", root / "images")
    assert code == 2 and "overwrite" in err
    assert _digest(root) == before and not (root / "images" / "pred").exists()


def test_existing_outputs_need_overwrite(run_dir, tiles, tmp_path, capsys):
    root, _ = tiles
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "Image_1.tif").write_bytes(b"earlier result")
    code, err = _refused(capsys, run_dir, root / "images", tmp_path / "out")
    assert code == 2 and "--overwrite" in err and "Image_1.tif" in err
    assert (tmp_path / "out" / "Image_1.tif").read_bytes() == b"earlier result"


def test_a_mask_of_another_size_is_named_before_any_map_is_written(run_dir, tiles, tmp_path,
                                                                   capsys):
    root, _ = tiles
    shutil.copytree(root / "masks", tmp_path / "masks")
    _write_tif(tmp_path / "masks" / "Mask_2.tif", np.ones((64, 64, 1), np.uint8))
    code, err = _refused(capsys, run_dir / "fold0", root / "images", tmp_path / "out",
                         "--masks", tmp_path / "masks")
    assert code == 2 and "Traceback" not in err
    assert f"--masks {tmp_path / 'masks'}: {tmp_path / 'masks' / 'Mask_2.tif'} is 64x64" in err
    assert f"Image_2.tif is {SIZE}x{SIZE}" in err
    assert not (tmp_path / "out").exists()


def test_the_no_crs_min_area_warning_names_the_input(run_dir, tiles, tmp_path, capsys):
    root, images = tiles
    _write_tif(tmp_path / "in" / "plain.tif", _to_profile(images["Image_0.tif"], "pbvs2026"),
               crs=None)
    _predict(*map(str, (run_dir / "fold0", tmp_path / "in", tmp_path / "out")), "--tta", "none",
             "--polygons", "--min-area", "5")
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "no CRS" in line]
    assert str(tmp_path / "in" / "plain.tif") in warning and ".partial" not in warning
    assert "--min-area is not applied" in warning


def test_a_batch_larger_than_memory_is_refused_before_any_output(run_dir, tiles, tmp_path,
                                                                 capsys):
    root, _ = tiles
    code, err = _refused(capsys, run_dir / "fold0", root / "images", tmp_path / "out",
                         "--batch-size", "100000000")
    assert code == 2 and "Traceback" not in err
    assert "batch size 100000000" in err and "GiB" in err and "--batch-size" in err
    assert not (tmp_path / "out").exists()


def test_sigterm_stops_with_143_and_leaves_no_temporary_files(run_dir, tiles, tmp_path, capsys,
                                                              monkeypatch):
    root, _ = tiles
    write = maps.MapWriter.write

    def write_then_terminate(self, row, prob):  # a scheduler's SIGTERM in mid-scene
        write(self, row, prob)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(maps.MapWriter, "write", write_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    code, err = _refused(capsys, run_dir / "fold0", root / "images", tmp_path / "out",
                         "--save-prob", "--tta", "none")
    assert code == 143 and "stopped: SIGTERM" in err and "Traceback" not in err
    left = [p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert left == []  # not even the hidden .Image_0.tif.partial.tif
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("lacking", [inference.STATS, inference.CONFIG, inference.WEIGHTS])
def test_checkpoint_lacking_a_file_is_named(run_dir, tiles, tmp_path, capsys, lacking):
    root, _ = tiles
    best = tmp_path / "run" / "best"
    shutil.copytree(run_dir / "fold0" / "best", best)
    (best / lacking).unlink()
    code, err = _refused(capsys, best.parent, root / "images", tmp_path / "out")
    assert code == 2 and lacking in err and not (tmp_path / "out").exists()


def test_unknown_checkpoint_folder(tiles, tmp_path, capsys):
    root, _ = tiles
    (tmp_path / "empty").mkdir()
    code, err = _refused(capsys, tmp_path / "empty", root / "images", tmp_path / "out")
    assert code == 2 and "no trained model" in err


def test_unfinished_folds_are_named_not_left_out(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.move(run / "fold1" / "best", run / "fold1" / "best.tmp")  # its save cut short
    shutil.rmtree(run / "fold2" / "best")  # still training
    with pytest.raises(UserError) as err:
        inference.best_folders(run)
    assert "fold1 (only best.tmp/" in str(err.value) and "fold2" in str(err.value)
    assert str(run / "fold0") in str(err.value)  # the way to use the finished ones
    assert inference.best_folders(run / "fold0") == [run / "fold0" / "best"]


def _broken_copy(run_dir, tmp_path, edit_stats=None, nan_tensor=False):
    """A copy of fold0/best with its stats edited or one weight tensor NaN."""
    best = tmp_path / "broken" / "best"
    shutil.copytree(run_dir / "fold0" / "best", best)
    if edit_stats is not None:
        table = json.loads((best / inference.STATS).read_text())
        edit_stats(table)
        (best / inference.STATS).write_text(json.dumps(table))
    if nan_tensor:
        variables, meta = weights.load(best / inference.WEIGHTS)
        flat = weights.flatten(variables)
        flat[next(iter(flat))] = np.full_like(flat[next(iter(flat))], np.nan)
        weights.save(best / inference.WEIGHTS, weights.unflatten(flat), meta)
    return best


@pytest.mark.parametrize("damage, expect", [
    (dict(nan_tensor=True), (inference.WEIGHTS, "non-finite", "1 tensor(s)")),
    (dict(edit_stats=lambda t: t["mean"].__setitem__(2, float("nan"))),
     (inference.STATS, "mean of", "= nan", "finite")),
    (dict(edit_stats=lambda t: t["std"].__setitem__(0, 0.0)),
     (inference.STATS, "std of", "= 0.0", "above 0")),
])
def test_a_broken_model_is_refused_not_mapped_as_nodata(run_dir, tiles, tmp_path, capsys,
                                                         damage, expect):
    root, _ = tiles
    best = _broken_copy(run_dir, tmp_path, **damage)
    # One broken fold next to good ones would poison the whole ensemble.
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(run_dir), str(best), "--input", str(root / "images"),
                      "--output", str(tmp_path / "out")])
    code, err = exit_info.value.code, capsys.readouterr().err
    assert code == 2 and str(best) in err and "Traceback" not in err
    assert all(text in err for text in expect), err
    assert not (tmp_path / "out").exists()


def test_non_finite_probabilities_are_an_error_not_nodata(run_dir, tiles):
    _, images = tiles
    good = inference.load_member(run_dir / "fold0" / "best")
    nan = jax.tree.map(lambda leaf: np.full_like(leaf, np.nan), good.variables)
    broken = dataclasses.replace(good, folder=Path("broken/best"), variables=nan)
    ensemble = inference.Ensemble([good, broken], "none", batch_size=2)
    with pytest.raises(UserError, match=r"the input: the models gave non-finite.*broken/best"):
        ensemble.probability(next(iter(images.values())), bands.CHANNELS)


@pytest.mark.parametrize("problem", ["unreadable", "band_count"])
def test_bad_tiles_are_named(run_dir, tmp_path, capsys, problem):
    bad = tmp_path / "in" / "Image_bad.tif"
    if problem == "unreadable":
        bad.parent.mkdir()
        bad.write_bytes(b"II*\x00 this is not really a TIFF")
    else:
        _write_tif(bad, np.zeros((SIZE, SIZE, 5), np.float32))
    before = _digest(tmp_path / "in")
    code, err = _refused(capsys, run_dir / "fold0", tmp_path / "in", tmp_path / "out")
    assert code == 2 and "Image_bad.tif" in err
    assert ("5 band(s)" in err) if problem == "band_count" else ("TIFF" in err)
    assert _digest(tmp_path / "in") == before


MMLS = Path(__file__).resolve().parents[2] / "shared/datasets/mmls_v1/validation_partition"


@pytest.mark.mmls
def test_real_mmls_v1_tiles_without_georeference(run_dir, tmp_path, capsys):
    if not MMLS.is_dir():
        pytest.skip(f"real data not here: {MMLS}")
    images = sorted((MMLS / "images").glob("*.tif"))[:3]
    for image in images:  # links: nothing is copied, and the dataset stays untouched
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / image.name).symlink_to(image)
    before = _digest(MMLS / "images")
    _predict(
        str(run_dir / "fold0"), str(tmp_path / "in"), str(tmp_path / "out"), "--bands", "mmlsv1",
        "--tta", "none", "--batch-size", "2", "--masks", str(MMLS / "masks"),
    )
    assert _digest(MMLS / "images") == before
    for image in images:
        mask, crs, _, dtype = _read(tmp_path / "out" / image.name)
        assert mask.shape == (SIZE, SIZE) and dtype == "uint8" and crs is None
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["tiles"] == 3
    assert "mIoU" in capsys.readouterr().out


def test_an_output_linked_to_an_input_is_never_overwritten(run_dir, tiles, tmp_path, capsys):
    root, _ = tiles
    before = _digest(root)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "Image_2.tif").symlink_to(root / "images" / "Image_2.tif")
    code, err = _refused(capsys, run_dir, root / "images", tmp_path / "out", "--overwrite")
    assert code == 2 and "would overwrite the input" in err and _digest(root) == before


# ----------------------------------------------------------------------------- scenes with nodata


def _collared(rng, height, width, valid_box=None):
    """A raw scene in the pbvs2026 profile with a nodata collar, and where it has no data.

    The collar is wider than a tile on the left (windows with no valid pixel at all) and has a
    diagonal edge; it is written as the file's nodata value in one band, NaN in another, and a
    few interior pixels are +Inf or -Inf in a third: a pixel invalid in any band is nodata.
    """
    stored = _to_profile(_scene(rng, height, width), "pbvs2026")
    yy, xx = np.mgrid[:height, :width]
    if valid_box is None:
        collar = (xx < 150) | (yy < 20) | (xx + yy < 260)
    else:
        top, left, size = valid_box
        collar = ~((yy >= top) & (yy < top + size) & (xx >= left) & (xx < left + size))
    half = (xx + yy) % 2 == 0
    stored[collar & half, 0] = -9999.0
    stored[collar & ~half, 2] = np.nan
    specks = (rng.random((height, width)) < 0.002) & ~collar
    stored[specks, 5] = rng.choice([np.inf, -np.inf], int(specks.sum()))
    return stored, collar | specks


def _write_nodata_tif(path, array_hwc, nodata):
    _write_tif(path, array_hwc)
    with rasterio.open(path, "r+") as dst:
        dst.nodata = nodata


@pytest.fixture(scope="module")
def collared_run(run_dir, tmp_path_factory):
    """The CLI on two collared scenes: 300 x 500, and 1100 x 700 with one valid 200 x 200 box
    (large enough for overviews, cheap: few windows hold valid pixels)."""
    root = tmp_path_factory.mktemp("collared")
    rng = np.random.default_rng()
    invalid = {}
    for name, (h, w), box in [("edge.tif", (300, 500), None), ("wide.tif", (1100, 700), (450, 240, 200))]:
        stored, invalid[name] = _collared(rng, h, w, box)
        _write_nodata_tif(root / "in" / name, stored, -9999.0)
    _predict(str(run_dir / "fold0"), str(root / "in"), str(root / "out"), "--tta", "none",
             "--save-prob", "--polygons", "--preview", "--batch-size", "4")
    return root, invalid


def test_nodata_is_255_in_the_mask_exactly_where_the_input_has_none(collared_run):
    root, invalid = collared_run
    for name, where in invalid.items():
        with rasterio.open(root / "out" / name) as src:
            mask, nodata = src.read(1), src.nodata
        with rasterio.open(root / "out" / "prob" / name) as src:
            prob, prob_nodata = src.read(1), src.nodata
        assert nodata == prob_nodata == 255
        np.testing.assert_array_equal(mask == 255, where)
        np.testing.assert_array_equal(prob == 255, where)
        assert set(np.unique(mask[~where])) <= {0, 1} and prob[~where].max() <= 254
        clear = np.abs(prob / 254.0 - THRESHOLD) > 0.5 / 254
        np.testing.assert_array_equal(mask[clear & ~where], prob[clear & ~where] / 254.0 > THRESHOLD)


def test_outputs_are_cloud_optimized_geotiffs(collared_run):
    from rio_cogeo.cogeo import cog_validate

    root, _ = collared_run
    for name in ("edge.tif", "wide.tif"):
        for path in (root / "out" / name, root / "out" / "prob" / name):
            valid, errors, _ = cog_validate(str(path), quiet=True)
            assert valid, (path, errors)
            with rasterio.open(path) as src, rasterio.open(root / "in" / name) as source:
                assert src.profile["tiled"] and src.compression.name == "deflate"
                assert (src.crs, src.transform, src.shape) == (source.crs, source.transform, source.shape)
                assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(root / "out" / "wide.tif") as src:
        assert src.overviews(1)  # 1100 x 700 is more than one 512 block: overviews


def test_a_cog_that_cannot_be_written_is_named_and_no_partial_file_is_left(tmp_path, monkeypatch):
    source = tmp_path / "source.tif"
    _write_tif(source, np.zeros((SIZE, SIZE, 1), np.uint8))
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(UserError, match=r"cannot write .*folder\.tif .*choose another --output"):
        maps.to_cog(source, tmp_path / "folder.tif", "nearest")
    assert (tmp_path / "folder.tif").is_dir()

    def fill_the_disk(src, dst, **options):
        Path(dst).write_bytes(b"half a COG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(maps.rasterio.shutil, "copy", fill_the_disk)
    with pytest.raises(UserError, match=r"cannot write .*full\.tif .*No space left"):
        maps.to_cog(source, tmp_path / "full.tif", "nearest")
    assert not (tmp_path / "full.tif").exists()


def test_windows_without_a_valid_pixel_are_not_computed(run_dir, monkeypatch):
    rng = np.random.default_rng()
    stored, invalid = _collared(rng, 300, 500)
    stored[invalid, 0] = np.nan
    ensemble = inference.load_ensemble([run_dir / "fold0"], "none", batch_size=4)
    scaled = []
    monkeypatch.setattr(inference, "scale_window",
                        lambda raw, tile: scaled.append(raw) or np.zeros((tile, tile, 7), np.float32))
    prob = ensemble.probability(stored)
    tile = ensemble.tile
    expected = sum(
        not invalid[y : y + tile, x : x + tile].all()
        for y in inference.window_starts(300, tile) for x in inference.window_starts(500, tile)
    )
    assert len(scaled) == expected < 15  # 3 x 5 windows, those inside the collar skipped
    np.testing.assert_array_equal(np.isnan(prob), invalid)
    # A scene with no valid pixel at all: all nodata, no window computed, no error.
    scaled.clear()
    assert ensemble.mask(np.full((200, 150, 7), np.nan, np.float32)).min() == inference.NODATA
    assert not scaled


def test_python_api_takes_raw_images_in_any_profile_with_the_configs_threshold(run_dir, tiles):
    _, images = tiles
    ensemble = inference.load_ensemble([run_dir / "fold0"], "none", batch_size=2)
    assert ensemble.threshold == THRESHOLD and ensemble.profile == bands.PROFILES["pbvs2026"]
    image = next(iter(images.values()))  # canonical, one tile = one window
    want = ensemble.predict_proba(normalize.percentile_scale(image)[None])[0]
    for profile in ("pbvs2026", "mmlsv2", "mmlsv1"):
        np.testing.assert_allclose(
            ensemble.probability(_to_profile(image, profile), profile), want, atol=1e-6
        )
    raw = _to_profile(image, "pbvs2026")
    np.testing.assert_array_equal(ensemble.mask(raw), want > THRESHOLD)
    np.testing.assert_array_equal(ensemble.mask(raw, threshold=0.2), want > 0.2)
    assert inference.load_ensemble([run_dir / "fold0"]).views == inference.tta.get("rot4")


def test_polygons_are_the_connected_landslide_regions_with_area_and_probability(collared_run, run_dir, tmp_path):
    import fiona
    from scipy import ndimage

    root, _ = collared_run
    with rasterio.open(root / "out" / "edge.tif") as src:
        mask, crs = src.read(1), src.crs
    with rasterio.open(root / "out" / "prob" / "edge.tif") as src:
        prob = src.read(1) / 254.0
    labels, count = ndimage.label(mask == 1)  # 4-connectivity, as GDAL polygonises
    with fiona.open(root / "out" / "polygons" / "edge.gpkg", layer="landslides") as layer:
        assert rasterio.crs.CRS.from_wkt(layer.crs_wkt) == crs
        features = list(layer)
    assert count > 0 and len(features) == count
    regions = sorted((np.sum(labels == k), prob[labels == k].mean()) for k in range(1, count + 1))
    found = sorted((f.properties["pixels"], f.properties["mean_prob"]) for f in features)
    np.testing.assert_allclose(found, regions, rtol=1e-6)
    for feature in features:  # 200 m pixels within 1.2° of the equator of an eqc projection
        assert feature.properties["area_m2"] == pytest.approx(feature.properties["pixels"] * 4e4, rel=1e-3)
    # --min-area drops specks: only regions of at least 5 pixels (2e5 m²) are kept.
    _predict(str(run_dir / "fold0"), str(root / "in" / "edge.tif"), str(tmp_path / "o"), "--tta",
             "none", "--polygons", "--min-area", "1.9e5")
    with fiona.open(tmp_path / "o" / "polygons" / "edge.gpkg") as layer:
        assert sorted(f.properties["pixels"] for f in layer) == sorted(n for n, _ in regions if n >= 5)


def test_preview_is_a_downsampled_quick_look(collared_run, monkeypatch):
    from matplotlib.image import imread

    root, invalid = collared_run
    png = root / "out" / "preview" / "wide.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and max(imread(png).shape) < 3000
    with io.SceneReader(root / "in" / "wide.tif", bands.PROFILES["pbvs2026"]) as reader:
        small = reader.overview(100)
    assert small.shape == (100, 64, 7)  # 1100 x 700 decimated 11 times
    # GDAL samples each 11 x 11 cell near its centre: the valid box is where it was, within a cell.
    rows, cols = np.nonzero(~np.isnan(small).any(-1))
    assert abs(rows.min() * 11 - 450) <= 11 and abs(cols.max() * 11 - 439) <= 11


def test_ground_areas_on_the_bodys_own_ellipsoid():
    from jaxswin import maps

    radius = 3396190.0
    pixels = [[(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)], [(2, 2), (2, 4), (4, 4), (4, 2), (2, 2)]]

    def area(crs, transform, rings):  # of rings given in pixels
        return maps._GroundArea(crs)([[transform * xy for xy in ring] for ring in rings])

    # Equirectangular, true scale at the equator: at 60° N a pixel covers cos(60°) of its map area.
    eqc = rasterio.crs.CRS.from_string(MARS_CRS)
    top = radius * np.radians(60.0)
    got = area(eqc, rasterio.Affine(200.0, 0, 0, 0, -200.0, top), pixels[:1])
    lat = np.radians([60.0, np.degrees((top - 2000) / radius)])
    want = radius**2 * (2000 / radius) * (np.sin(lat[0]) - np.sin(lat[1]))
    assert got == pytest.approx(want, rel=1e-4) and got == pytest.approx(100 * 4e4 * 0.5, rel=0.02)
    # Geographic degrees on the Mars sphere: the spherical zone formula.
    geographic = rasterio.crs.CRS.from_string(f"+proj=longlat +R={radius} +no_defs")
    degrees = rasterio.Affine(0.01, 0, 10.0, 0, -0.01, 45.0)
    got = area(geographic, degrees, pixels[:1])
    want = radius**2 * np.radians(0.1) * (np.sin(np.radians(45.0)) - np.sin(np.radians(44.9)))
    assert got == pytest.approx(want, rel=1e-4)
    # A hole is subtracted; without a CRS there is no area.
    assert area(geographic, degrees, pixels) == pytest.approx(got * 0.96, rel=1e-3)
    assert maps._GroundArea(None)(pixels) is None


# ----------------------------------------------------------------------------- run layouts


def test_every_run_layout_is_a_checkpoint(run_dir, tmp_path):
    best = run_dir / "fold0" / "best"
    official = tmp_path / "official_run"
    shutil.copytree(best, official / "official" / "best")  # after `jaxswin.train --fold official`
    assert inference.best_folders(official) == [official / "official" / "best"]
    assert inference.best_folders(official / "official") == [official / "official" / "best"]
    both = tmp_path / "both"  # folds and the official model: the workdir means its folds
    for name in ("fold1", "fold0", "official", "fold10"):
        shutil.copytree(best, both / name / "best")
    assert inference.best_folders(both) == [both / f"fold{k}" / "best" for k in (0, 1, 10)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(inference.UserError, match="RUN/official/best"):
        inference.best_folders(tmp_path / "empty")


def test_the_command_training_prints_works_as_printed(tmp_path):
    import shlex

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JAXSWIN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    train = [
        sys.executable, "-m", "jaxswin.train", "--fold", "official", "--preset", "tiny",
        "--workdir", str(tmp_path / "run"), "--set", "train.epochs=1",
        "--set", "train.max_steps_per_epoch=2", "--set", "train.batch_size=4",
        "--set", "train.eval_batch_size=8", "--set", "data.workers=0",
    ]
    result = subprocess.run(train, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [l for l in result.stdout.splitlines() if l.startswith("predict with: ")]
    words = shlex.split(line.removeprefix("predict with: "))
    assert words[:3] == ["python", "-m", "jaxswin.predict"] and "TILES" not in words
    assert words[words.index("--checkpoint") + 1] == str(tmp_path / "run" / "official")
    result = subprocess.run([sys.executable, *words[1:]], cwd=root, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = sorted(p.name for p in Path(words[words.index("--input") + 1]).glob("*.tif"))
    outputs = sorted(p.name for p in (tmp_path / "run" / "predictions").glob("*.tif"))
    assert inputs and outputs == inputs
