"""End-to-end training runs of the tiny preset on the synthetic data, each in its own process:
one device vs two, one process vs two joined by jax.distributed, and kill-and-resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxswin import weights

ROOT = Path(__file__).resolve().parent.parent
QUICK = [
    "--preset", "tiny",
    "--set", "train.epochs=2",
    "--set", "train.max_steps_per_epoch=3",
    "--set", "train.batch_size=4",
    "--set", "train.eval_batch_size=8",
    "--set", "data.workers=0",
]


def environment(cache: Path, devices: int = 1) -> dict:
    env = dict(os.environ, JAXSWIN_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


def train_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxswin.train", "--fold", "0", "--workdir", str(workdir),
            *QUICK, *extra]


def run_train(workdir: Path, cache: Path, devices: int = 1, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(workdir, *extra), cwd=ROOT, env=environment(cache, devices),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def step_losses(workdir: Path) -> np.ndarray:
    lines = (workdir / "fold0" / "steps.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["loss"] for line in lines])


def epoch_records(workdir: Path) -> list[dict]:
    timing = {"train_seconds", "tiles_per_s"}
    lines = (workdir / "fold0" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_train(workdir, cache)
    return workdir, result


def test_reference_run_leaves_a_complete_run_folder(reference_run):
    workdir, result = reference_run
    fold = workdir / "fold0"
    for name in ("config.toml", "stats.json", "metrics.jsonl", "steps.jsonl", "curves.png",
                 "summary.json", "best/model.safetensors", "best/config.toml", "best/stats.json",
                 "best/metrics.json"):
        assert (fold / name).is_file(), name
    assert len(step_losses(workdir)) == 6
    assert np.all(np.isfinite(step_losses(workdir)))
    records = epoch_records(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        for kind in ("raw", "ema"):
            assert 0.0 <= record[kind]["miou"] <= 1.0
    best = json.loads((fold / "best" / "metrics.json").read_text())
    assert best["miou"] == max(r[k]["miou"] for r in records for k in ("raw", "ema"))
    assert "finished" in result.stdout and "held-out (random fold) mIoU" in result.stdout
    assert "epoch   2/2" in result.stderr and "held-out (random fold)" in result.stderr
    split = json.loads((fold / "summary.json").read_text())["split"]
    assert split == {"held_out": "random fold", "folds": "stratified", "train_tiles": 128,
                     "held_out_tiles": 32, "dropped_tiles": 0}
    assert best["held_out"] == "random fold"


def test_two_devices_give_the_same_losses(reference_run, tmp_path, cache):
    workdir, _ = reference_run
    run_train(tmp_path, cache, devices=2)
    np.testing.assert_allclose(step_losses(tmp_path), step_losses(workdir), rtol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_joined_by_jax_distributed_agree(reference_run, tmp_path, cache):
    workdir, _ = reference_run
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            train_command(tmp_path, "--coordinator-address", address, "--num-processes", "2",
                          "--process-id", str(index)),
            cwd=ROOT, env=environment(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        for index in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in processes]
    report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{err[-3000:]}"
                       for i, (p, (_, err)) in enumerate(zip(processes, outputs)))
    assert all(p.returncode == 0 for p in processes), report
    np.testing.assert_allclose(step_losses(tmp_path), step_losses(workdir), rtol=1e-5)


def test_killed_run_resumes_to_the_same_result(reference_run, tmp_path, cache):
    workdir, _ = reference_run
    steps = tmp_path / "fold0" / "steps.jsonl"
    first_checkpoint = tmp_path / "fold0" / "checkpoints" / "1"
    process = subprocess.Popen(train_command(tmp_path), cwd=ROOT, env=environment(cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if first_checkpoint.is_dir() and steps.exists() and len(steps.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()

    result = run_train(tmp_path, cache)
    assert "resuming" in result.stderr
    assert epoch_records(tmp_path) == epoch_records(workdir)
    resumed, _ = weights.load(tmp_path / "fold0" / "best" / "model.safetensors")
    reference, _ = weights.load(workdir / "fold0" / "best" / "model.safetensors")
    flat_resumed, flat_reference = weights.flatten(resumed), weights.flatten(reference)
    assert flat_resumed.keys() == flat_reference.keys()
    for name, value in flat_reference.items():
        np.testing.assert_array_equal(flat_resumed[name], value, err_msg=name)


def test_finished_run_rerun_does_nothing_new(reference_run, cache):
    workdir, _ = reference_run
    before = (workdir / "fold0" / "metrics.jsonl").read_text()
    run_train(workdir, cache)
    assert (workdir / "fold0" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--fold", "9"], "--fold 9"),
    (["--data", "/nonexistent/tiles"], "/nonexistent/tiles"),
    (["--set", "train.lr=fast"], "train.lr"),
    (["--preset", "no_such_preset"], "no_such_preset"),
])
def test_bad_options_fail_with_a_clear_message(tmp_path, cache, args, message):
    command = [sys.executable, "-m", "jaxswin.train", "--fold", "0", "--workdir", str(tmp_path),
               *QUICK, *args]
    result = subprocess.run(command, cwd=ROOT, env=environment(cache), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_that_does_not_split_over_devices_is_an_error(tmp_path, cache):
    result = subprocess.run(train_command(tmp_path, "--set", "train.batch_size=3"), cwd=ROOT,
                            env=environment(cache, devices=2), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "train.batch_size=3" in result.stderr and "2 devices" in result.stderr


def test_rerun_with_other_settings_refuses_to_mix_runs(reference_run, cache):
    workdir, _ = reference_run
    result = subprocess.run(train_command(workdir, "--set", "train.lr=5e-4"), cwd=ROOT,
                            env=environment(cache), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "different configuration" in result.stderr
