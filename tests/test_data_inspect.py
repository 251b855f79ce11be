"""Band checks: the band order inferred from the pixels, on synthetic and real tiles."""

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from jaxswin import config, predict, train, weights
from jaxswin.data import bands, normalize, synthetic
from jaxswin.data import inspect as inspect_lib
from jaxswin.data.__main__ import main as data_main
from jaxswin.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MMLS_V1, MMLS_V2 = SHARED / "mmls_v1", SHARED / "mmls_v2"
SAMPLE = 24  # tiles per check: enough for the votes, cheap to read


def _shared(root: Path):
    return pytest.mark.skipif(not root.is_dir(), reason=f"real dataset not found at {root}")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A small synthetic set (pbvs2026 band order) from a fresh seed."""
    seed = int(np.random.default_rng().integers(1_000_000))
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(root, num_train=SAMPLE, num_val=0, seed=seed)


def _sample(root: Path) -> inspect_lib.Sample:
    return inspect_lib.read_sample(inspect_lib.input_files(root), SAMPLE)


def _shuffled(sample: inspect_lib.Sample, perm: np.ndarray) -> inspect_lib.Sample:
    """The sample with file band i taken from band perm[i]."""
    return dataclasses.replace(
        sample,
        tiles=[tile[..., perm] for tile in sample.tiles],
        dtypes=tuple(sample.dtypes[i] for i in perm),
        extremes=sample.extremes[perm],
    )


CASES = [
    pytest.param("synthetic", "pbvs2026", id="synthetic"),
    pytest.param(MMLS_V1, "mmlsv1", id="mmls_v1", marks=_shared(MMLS_V1)),
    # MMLSv2's README lists mmlsv2's order, but its files are in pbvs2026 order (issue 12).
    pytest.param(MMLS_V2, "pbvs2026", id="mmls_v2", marks=_shared(MMLS_V2)),
]


@pytest.fixture(scope="module")
def samples(synthetic_root):
    cache = {}

    def get(root):
        root = synthetic_root if root == "synthetic" else root
        if root not in cache:
            cache[root] = _sample(root)
        return cache[root]

    return get


@pytest.mark.parametrize("root, profile", CASES)
def test_each_layout_is_identified_and_the_other_profiles_contradicted(samples, root, profile):
    report = inspect_lib.inspect(samples(root))
    assert report.inference.order == bands.PROFILES[profile], report.format(str(root))
    for name, verdict in report.verdicts.items():
        assert verdict.status == ("fits" if name == profile else "contradicted"), (name, verdict)
    # The decisive steps are strong on every one of these sets.
    assert all(report.inference.strong[s] for s in ("terrain", "colour", "red_blue", "green"))


@pytest.mark.parametrize("root, profile", CASES)
def test_shuffled_bands_are_caught(samples, root, profile):
    sample, truth = samples(root), bands.PROFILES[profile]
    rng = np.random.default_rng()
    for _ in range(3):
        perm = rng.permutation(len(truth))
        while (perm == np.arange(len(truth))).all():
            perm = rng.permutation(len(truth))
        shuffled = tuple(truth[i] for i in perm)
        report = inspect_lib.inspect(_shuffled(sample, perm), declared=truth)
        assert report.inference.order == shuffled, (perm, report.inference.lines)
        verdict = report.verdicts[profile]
        moved = {shuffled[i] for i in range(len(perm)) if perm[i] != i}
        if moved <= {"gray", "thermal"}:  # the one step that may be weak (synthetic data)
            assert verdict.status != "fits", perm
        else:
            assert verdict.status == "contradicted", (perm, verdict)
            with pytest.raises(DataError) as caught:
                inspect_lib.check_sample(_shuffled(sample, perm), truth, "error", "tiles")
            # It names the order the bands are in now (a channel list: no known profile).
            assert f"fit {inspect_lib.profile_name(shuffled)} (" in str(caught.value)


def test_wrong_profile_stops_naming_the_one_that_fits(samples, caplog):
    sample = samples("synthetic")
    with pytest.raises(DataError) as caught:
        inspect_lib.check_sample(sample, bands.PROFILES["mmlsv2"], "error", "the tiles")
    message = str(caught.value)
    assert "\n" not in message and "do not fit band profile mmlsv2" in message
    assert "fit pbvs2026" in message and "data.band_check" in message
    # warn: the same message as a warning, and the run goes on; off: not even read.
    with caplog.at_level(logging.WARNING, "jaxswin.data"):
        verdict = inspect_lib.check_sample(sample, bands.PROFILES["mmlsv2"], "warn", "the tiles")
    assert verdict.status == "contradicted" and "fit pbvs2026" in caplog.text
    assert inspect_lib.check([Path("/no/such/tile.tif")], bands.PROFILES["mmlsv2"], "off") is None
    with pytest.raises(ConfigError, match="data.band_check"):
        inspect_lib.check([], bands.PROFILES["mmlsv2"], "loud")


def _with_tiles(sample, tiles):
    return dataclasses.replace(sample, tiles=tiles)


@pytest.mark.parametrize("problem", ["all_nodata", "few_valid", "constant", "noise"])
def test_weak_evidence_is_undetermined_and_never_stops(samples, problem, caplog):
    sample, rng = samples("synthetic"), np.random.default_rng()
    shape = sample.tiles[0].shape
    if problem == "all_nodata":
        tiles = [np.full(shape, np.nan, np.float32) for _ in range(4)]
    elif problem == "few_valid":  # a 10 x 10 valid corner: under MIN_VALID pixels
        tiles = [np.where(np.arange(shape[0])[:, None, None] < 10, t, np.nan)
                 for t in sample.tiles]
        tiles = [np.where(np.arange(shape[1])[None, :, None] < 10, t, np.nan) for t in tiles]
    elif problem == "constant":
        tiles = [np.ones(shape, np.float32) * rng.uniform(size=7) for _ in range(4)]
    else:
        tiles = [rng.normal(size=shape).astype(np.float32) for _ in range(8)]
    with caplog.at_level(logging.WARNING, "jaxswin.data"):
        verdict = inspect_lib.check_sample(_with_tiles(sample, tiles), bands.PROFILES["mmlsv2"],
                                           "error", "the tiles")
    assert verdict.status == "undetermined" and "cannot tell" in caplog.text
    report = inspect_lib.inspect(_with_tiles(sample, tiles))
    assert "undetermined" in report.format("x")  # and the statistics print without NaN errors


def test_a_constant_thermal_band_is_no_obstacle(samples):
    """MMLS v1's thermal band is nearly flat; a flat one must still leave gray identified."""
    sample = samples("synthetic")
    thermal = bands.PROFILES["pbvs2026"].index("thermal")
    tiles = [t.copy() for t in sample.tiles]
    for tile in tiles:
        tile[..., thermal] = 321.0
    report = inspect_lib.inspect(_with_tiles(sample, tiles))
    assert report.inference.order == bands.PROFILES["pbvs2026"]
    assert report.inference.strong["gray"]


def _write_scene(path: Path, image_hwc: np.ndarray, nodata: float, pixel_m: float = 50.0):
    with rasterio.open(
        path, "w", driver="GTiff", width=image_hwc.shape[1], height=image_hwc.shape[0],
        count=image_hwc.shape[2], dtype="float32", crs=synthetic.CRS, nodata=nodata,
        transform=rasterio.Affine(pixel_m, 0, 0, 0, -pixel_m, 0),
    ) as dst:
        dst.write(np.moveaxis(image_hwc, -1, 0))


def test_scene_with_a_nodata_collar_is_sampled_by_windows(tmp_path, capsys):
    """A 640 x 640 scene in mmlsv2 order, a 100-pixel nodata collar, read window by window."""
    rng = np.random.default_rng()
    channels, _ = synthetic.tile(rng, 640)
    order = bands.PROFILES["mmlsv2"]
    image = np.stack([channels[c] for c in order], -1)
    image[:100], image[:, -100:] = -9999.0, -9999.0
    _write_scene(tmp_path / "scene.tif", image, nodata=-9999.0)
    assert data_main(["inspect", str(tmp_path / "scene.tif"), "--bands", "mmlsv2"]) == 0
    out = capsys.readouterr().out
    assert "(profile mmlsv2)" in out and "pixel size unknown" not in out
    sample = inspect_lib.read_sample([tmp_path / "scene.tif"], 16)
    assert len(sample.tiles) == 16 and all(t.shape == (128, 128, 7) for t in sample.tiles)
    nodata = [row["nodata"] for row in inspect_lib.band_stats(sample)]
    assert all(0.2 < share < 0.6 for share in nodata), nodata  # ~30 % of the scene is collar


def test_cli_prints_statistics_and_exits_1_when_the_declared_profile_is_contradicted(
    synthetic_root, capsys
):
    assert data_main(["inspect", str(synthetic_root), "--bands", "mmlsv1"]) == 1
    out = capsys.readouterr().out
    stats_rows = [line.split() for line in out.splitlines() if line.split()[:1] in
                  [[str(b)] for b in range(1, 8)]]
    assert [row[1] for row in stats_rows] == ["float32"] * 7
    dem = bands.PROFILES["pbvs2026"].index("dem")
    assert float(stats_rows[dem][2]) < -2000  # the DEM's minimum, in metres
    verdicts = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert verdicts["pbvs2026"].endswith("fits") and "contradicted" in verdicts["mmlsv1"]
    assert "(profile pbvs2026)" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        data_main(["inspect", str(tmp_path / "nothing")])
    assert stop.value.code == 2 and "no such file or folder" in capsys.readouterr().err
    three = np.ones((32, 32, 3), np.float32)
    _write_scene(tmp_path / "rgb.tif", three, nodata=0.0)
    with pytest.raises(SystemExit):
        data_main(["inspect", str(tmp_path / "rgb.tif")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 band(s)" in err
    # One band (read as a page stack would be): the fix is the file, no band profile has one.
    _write_scene(tmp_path / "dem.tif", np.ones((32, 32, 1), np.float32), nodata=0.0)
    with pytest.raises(SystemExit):
        data_main(["inspect", str(tmp_path / "dem.tif")])
    err = capsys.readouterr().err
    assert "dem.tif: 1 band(s)" in err and "stack all seven" in err and "--bands" not in err


def test_a_single_tile_is_judged_on_its_quadrants_and_never_stops_a_run(synthetic_root):
    files = inspect_lib.input_files(synthetic_root)
    truth = bands.PROFILES["pbvs2026"]
    rng = np.random.default_rng()
    for index in rng.choice(len(files), 3, replace=False):
        sample = inspect_lib.read_sample([files[index]])
        report = inspect_lib.inspect(sample)
        assert report.inference.tiles == 4 and not any(report.inference.strong.values())
        assert report.verdicts["pbvs2026"].status != "contradicted", files[index]
        shuffled = _shuffled(sample, rng.permutation(len(truth)))
        # Shuffled or not, one tile is too little evidence to stop a run: a warning at most.
        assert inspect_lib.check_sample(shuffled, truth, "error").status != "contradicted"


def test_train_cli_option_sets_the_config_key():
    args = train.build_parser().parse_args(["--fold", "0", "--band-check", "warn"])
    assert train.load_config(args).data.band_check == "warn"


def test_training_with_the_wrong_profile_stops_before_it_starts(synthetic_root, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "jaxswin.train", "--fold", "0", "--preset", "tiny",
         "--data", str(synthetic_root), "--bands", "mmlsv2", "--workdir", str(tmp_path / "run"),
         "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: band check:") and "fit pbvs2026" in last, run.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # so the rerun with --bands pbvs2026 is not refused


@pytest.fixture(scope="module")
def fake_checkpoint(tmp_path_factory):
    """A best/ folder that loads (config, stats, weights) but is no model: the band check comes
    before the model is built, so a run that passes it fails later on the weights instead."""
    best = tmp_path_factory.mktemp("run") / "best"
    best.mkdir()
    (best / "config.toml").write_text(config.to_toml(config.load("tiny")))
    normalize.Stats(channels=bands.CHANNELS, mean=(0.5,) * 7, std=(0.2,) * 7,
                    pos_weight=1.0).save(best / "stats.json")
    weights.save(best / "model.safetensors", {"params": {"unused": np.zeros(1, np.float32)}})
    return best


@pytest.mark.parametrize("check, stops", [("error", True), ("off", False)])
def test_prediction_with_the_wrong_profile_stops_naming_the_right_one(
    synthetic_root, fake_checkpoint, tmp_path, capsys, check, stops
):
    with pytest.raises(SystemExit) as stop:
        predict.main(["--checkpoint", str(fake_checkpoint), "--input",
                      str(synthetic_root / "train" / "images"), "--output", str(tmp_path),
                      "--bands", "mmlsv2", "--band-check", check])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert ("band check" in err and "fit pbvs2026" in err) == stops, err
    if stops:  # the option of the command run, not the training's config key
        assert 'set --band-check to "warn" or "off"' in err and "data.band_check" not in err
