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


def assert_same_run(workdir: Path, reference: Path) -> None:
    assert epoch_records(workdir) == epoch_records(reference)
    np.testing.assert_array_equal(step_losses(workdir), step_losses(reference))
    resumed, _ = weights.load(workdir / "fold0" / "best" / "model.safetensors")
    expected, _ = weights.load(reference / "fold0" / "best" / "model.safetensors")
    flat_resumed, flat_expected = weights.flatten(resumed), weights.flatten(expected)
    assert flat_resumed.keys() == flat_expected.keys()
    for name, value in flat_expected.items():
        np.testing.assert_array_equal(flat_resumed[name], value, err_msg=name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("reference")
    result = run_train(workdir, cache, 1, "--tensorboard")
    return workdir, result


def test_reference_run_leaves_a_complete_run_folder(reference_run, read_tensorboard):
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
    scalars = read_tensorboard(fold / "tensorboard")  # --tensorboard: the same epoch records
    for kind in ("raw", "ema"):
        expected = {r["epoch"]: r[kind]["miou"] for r in records}
        assert scalars[f"{kind}/miou"] == pytest.approx(expected)
    assert "finished" in result.stdout and "held-out (random fold) mIoU" in result.stdout
    assert "epoch   2/2" in result.stderr and "held-out (random fold)" in result.stderr
    split = json.loads((fold / "summary.json").read_text())["split"]
    assert split == {"held_out": "random fold", "folds": "kfold", "train_tiles": 128,
                     "held_out_tiles": 32, "dropped_tiles": 0}
    assert best["held_out"] == "random fold"


def assert_same_trajectory(losses: np.ndarray, reference: np.ndarray) -> None:
    """A batch split over devices sums its gradients and BatchNorm moments in another order: the
    first steps agree to float32 rounding; later ones drift as Adam's normalised updates amplify
    it (0.02 % after six steps), far below what a wrong reduction gives (a per-device BatchNorm
    already changes the first loss)."""
    assert len(losses) == len(reference)
    np.testing.assert_allclose(losses[:2], reference[:2], rtol=1e-5)
    np.testing.assert_allclose(losses, reference, rtol=1e-3)


def test_two_devices_give_the_same_losses(reference_run, tmp_path, cache):
    workdir, _ = reference_run
    run_train(tmp_path, cache, devices=2)
    assert_same_trajectory(step_losses(tmp_path), step_losses(workdir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(workdir: Path, cache: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            train_command(workdir, "--coordinator-address", address, "--num-processes", "2",
                          "--process-id", str(index)),
            cwd=ROOT, env=environment(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        for index in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in processes]
    report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{err[-3000:]}"
                       for i, (p, (_, err)) in enumerate(zip(processes, outputs)))
    assert all(p.returncode == 0 for p in processes), report


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("two_processes")
    run_two_processes(workdir, cache)
    return workdir


def test_two_processes_joined_by_jax_distributed_agree(reference_run, two_process_run):
    workdir, _ = reference_run
    assert_same_trajectory(step_losses(two_process_run), step_losses(workdir))


def test_killed_run_resumes_to_the_same_result(reference_run, tmp_path, cache):
    workdir, _ = reference_run
    steps = tmp_path / "fold0" / "steps.jsonl"
    first_checkpoint = tmp_path / "fold0" / "checkpoints" / "3"  # by global step: epoch 1
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
    assert_same_run(tmp_path, workdir)


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


# ----------------------------------------------------------------------------- runs that survive
# Each run below goes through tests/train_driver.py, which can pause a run at a chosen batch
# (so a signal lands mid-epoch at a known step) or put a NaN into chosen batches.

DRIVER = str(ROOT / "tests" / "train_driver.py")
HEARTBEAT_S = 30  # shorter risks a busy 2-core machine missing heartbeats of a live process
BOUND_S = 120  # a survivor of a dead peer must be gone within this


def driver_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, DRIVER, *train_command(workdir, *extra)[3:]]


def start(command, cache, **hooks) -> subprocess.Popen:
    env = dict(environment(cache), **hooks)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, processes, timeout=600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        ended = [p for p in processes if p.poll() is not None]
        assert not ended, ended[0].communicate()[1][-3000:]
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "fold0" / "checkpoints").iterdir()
                  if p.name.isdigit())


def test_sigterm_mid_epoch_saves_there_and_the_rerun_ends_as_if_never_stopped(
        reference_run, tmp_path, cache):
    workdir, _ = reference_run
    marker = tmp_path / "paused"
    run = start(driver_command(tmp_path / "run"), cache, JAXSWIN_TEST_PAUSE_AT="2:2",
                JAXSWIN_TEST_MARKER=str(marker))
    wait_for(marker, [run])
    run.send_signal(signal.SIGTERM)
    marker.unlink()
    _, err = run.communicate(timeout=600)
    assert run.returncode == 75, err[-3000:]
    assert "SIGTERM" in err and "epoch 2, step 1 of 3" in err and "Traceback" not in err
    assert checkpoint_steps(tmp_path / "run")[-1] == 4  # 3 steps of epoch 1 + 1 of epoch 2

    result = run_train(tmp_path / "run", cache)
    assert "resuming" in result.stderr and "step 1 of 3" in result.stderr
    assert_same_run(tmp_path / "run", workdir)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(
        two_process_run, tmp_path, cache):
    marker = tmp_path / "paused"

    def launch(**hooks):
        address = f"127.0.0.1:{free_port()}"
        return [start(driver_command(tmp_path / "run", "--coordinator-address", address,
                                     "--num-processes", "2", "--process-id", str(index)),
                      cache, **(hooks if index == 1 else {}))
                for index in range(2)]

    processes = launch(JAXSWIN_TEST_PAUSE_AT="1:3", JAXSWIN_TEST_MARKER=str(marker))
    wait_for(marker, processes)
    processes[1].send_signal(signal.SIGTERM)  # process 0 is never signalled
    marker.unlink()
    outputs = [p.communicate(timeout=600) for p in processes]
    report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{err[-2000:]}"
                       for i, (p, (_, err)) in enumerate(zip(processes, outputs)))
    assert [p.returncode for p in processes] == [75, 75], report
    assert checkpoint_steps(tmp_path / "run")[-1] == 2, report

    processes = launch()
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-3000:]
    assert "resuming" in outputs[0][1]
    assert_same_run(tmp_path / "run", two_process_run)


def test_a_killed_peer_ends_the_other_process_in_bounded_time(tmp_path, cache):
    address = f"127.0.0.1:{free_port()}"
    steps = tmp_path / "fold0" / "steps.jsonl"
    processes = [start(train_command(tmp_path, "--coordinator-address", address,
                                     "--num-processes", "2", "--process-id", str(index),
                                     "--heartbeat-timeout", str(HEARTBEAT_S)), cache)
                 for index in range(2)]
    deadline = time.time() + 600
    while not (steps.exists() and len(steps.read_text().splitlines()) >= 2):
        assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = processes[0].communicate(timeout=BOUND_S + 60)
    waited = time.time() - killed
    processes[1].wait()
    assert processes[0].returncode == 4, err[-3000:]
    assert waited < BOUND_S, f"{waited:.0f} s"
    assert "lost process 1" in err, err[-3000:]
    assert "Traceback" not in err


def test_nonfinite_step_stops_the_run_naming_where_and_the_last_good_checkpoint(tmp_path, cache):
    run = start(driver_command(tmp_path), cache, JAXSWIN_TEST_NAN_AT="2:2")
    _, err = run.communicate(timeout=600)
    assert run.returncode == 3, err[-3000:]
    assert "non-finite" in err and "epoch 2, step 2 of 3" in err
    assert str(tmp_path / "fold0" / "checkpoints" / "3") in err  # the end of epoch 1
    assert "Traceback" not in err
    assert checkpoint_steps(tmp_path) == [3]


def test_skipped_nonfinite_steps_are_counted_and_enough_in_a_row_stop(tmp_path, cache):
    # fp32 here (its step is compiled once for the module); the fp16 step's handling of the
    # same NaN batch is checked on a toy model in test_train_step.py.
    run = start(driver_command(tmp_path, "--set", 'train.on_nonfinite="skip"',
                               "--set", "train.max_nonfinite=2"),
                cache, JAXSWIN_TEST_NAN_AT="1:2,2:2,2:3")
    _, err = run.communicate(timeout=900)
    assert run.returncode == 3, err[-3000:]
    assert "2 non-finite steps in a row" in err and "epoch 2, step 3 of 3" in err
    first_epoch = epoch_records(tmp_path)[0]
    assert first_epoch["nonfinite_steps"] == first_epoch["skipped_steps"] == 1
    assert np.isfinite(first_epoch["loss"])
    assert "1 steps skipped (1 non-finite" in err
    records = [json.loads(line) for line in
               (tmp_path / "fold0" / "steps.jsonl").read_text().splitlines()]
    assert [r["nonfinite"] for r in records] == [False, True, False, False, True, True]
    assert [r["step"] for r in records] == list(range(6))
