"""A fold's logs: metrics.jsonl, curves.png and the optional TensorBoard event files."""

import json

import numpy as np
import pytest

from jaxswin.errors import UserError
from jaxswin.train import RunLog


def record(epoch, rng):
    scores = {kind: {"miou": rng.random(), "f1": rng.random(), "loss": rng.random()}
              for kind in ("raw", "ema")}
    return {"epoch": epoch, "step": 3 * epoch, "loss": rng.random(), "lr": 1e-3 * rng.random(),
            "loss_scale": 1.0, "skipped_steps": 0, "train_seconds": 2.5, "tiles_per_s": None,
            **scores}


def test_epochs_reach_jsonl_curves_and_tensorboard(tmp_path, read_tensorboard):
    rng = np.random.default_rng()
    records = [record(epoch, rng) for epoch in (1, 2, 3)]
    log = RunLog(tmp_path, completed_epochs=0, completed_steps=0, tensorboard=True)
    for r in records:
        log.epoch(r)
    log.close()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert (tmp_path / "curves.png").stat().st_size > 0
    scalars = read_tensorboard(tmp_path / "tensorboard")
    for r in records:
        for kind in ("raw", "ema"):
            for key in ("miou", "f1", "loss"):
                assert scalars[f"{kind}/{key}"][r["epoch"]] == pytest.approx(r[kind][key])
        assert scalars["train/loss"][r["epoch"]] == pytest.approx(r["loss"])
        assert scalars["train/lr"][r["epoch"]] == pytest.approx(r["lr"], rel=1e-6)
    assert "train/tiles_per_s" not in scalars  # None (no timed step) is not a value
    assert "train/epoch" not in scalars and "train/step" not in scalars


def test_resumed_log_keeps_completed_epochs_only(tmp_path, read_tensorboard):
    rng = np.random.default_rng()
    first = RunLog(tmp_path, completed_epochs=0, completed_steps=0, tensorboard=True)
    for epoch in (1, 2):
        first.epoch(record(epoch, rng))
    first.close()
    steps = [json.dumps({"epoch": 1 + step // 3, "step": step}) for step in range(6)]
    (tmp_path / "steps.jsonl").write_text("".join(line + "\n" for line in steps))

    redo = record(2, rng)  # resumed from the checkpoint of epoch 1, after its 3 steps
    resumed = RunLog(tmp_path, completed_epochs=1, completed_steps=3, tensorboard=True)
    assert [r["epoch"] for r in resumed.history] == [1]
    assert (tmp_path / "steps.jsonl").read_text() == "".join(line + "\n" for line in steps[:3])
    resumed.epoch(redo)
    resumed.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    # The newest event file holds the redone epoch (TensorBoard purges the older one's).
    assert read_tensorboard(tmp_path / "tensorboard")["raw/miou"][2] == \
        pytest.approx(redo["raw"]["miou"])


def test_without_tensorboard_no_event_files(tmp_path):
    log = RunLog(tmp_path, completed_epochs=0, completed_steps=0)
    log.epoch(record(1, np.random.default_rng()))
    log.close()
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "steps.jsonl"])
def test_line_cut_short_at_the_end_is_dropped_on_resume(tmp_path, caplog, name):
    """A kill or a full disk in the middle of an append leaves half a line."""
    rng = np.random.default_rng()
    records = [record(epoch, rng) for epoch in (1, 2)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / name).write_text(text + json.dumps(record(3, rng))[:25])
    RunLog(tmp_path, completed_epochs=2, completed_steps=7)
    assert (tmp_path / name).read_text() == text
    assert f"{name}: dropped 1 line(s)" in caplog.text


def test_damaged_line_before_records_is_an_error_naming_it(tmp_path):
    rng = np.random.default_rng()
    lines = [json.dumps(record(1, rng)), "{\"epoch\": 2, \"lo", json.dumps(record(3, rng))]
    text = "\n".join(lines) + "\n"
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(UserError, match="metrics.jsonl: line 2 is not a JSON record"):
        RunLog(tmp_path, completed_epochs=3, completed_steps=9)
    assert (tmp_path / "metrics.jsonl").read_text() == text  # left for the user to repair
