"""The pieces of jaxswin.resilience and the run folder's storage guarantees, in-process:
stop signals, the non-finite policy, storage probes, and writes that fail half-way."""

import errno
import json
import os
import signal

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import atomicity

from jaxswin import config as config_lib
from jaxswin import data as data_lib
from jaxswin import resilience, train, weights
from jaxswin.errors import ConfigError, UserError


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ----------------------------------------------------------------------------- stop signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_asks_to_stop_second_stops_at_once(sig):
    before = signal.getsignal(sig)
    with resilience.StopSignals() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), sig)
        assert stop.requested() and stop.received == sig.name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before


# ----------------------------------------------------------------------------- non-finite policy


def test_stop_policy_stops_at_the_first_nonfinite_step():
    guard = resilience.NonfiniteGuard("stop", 10)
    assert guard.reason_to_stop(False) is None
    assert "on_nonfinite" in guard.reason_to_stop(True)


def test_skip_policy_stops_only_after_the_limit_in_a_row():
    guard = resilience.NonfiniteGuard("skip", 3)
    flags = [True, True, False, True, True, False, True, True]
    assert [guard.reason_to_stop(f) for f in flags] == [None] * len(flags)
    assert "3 non-finite steps in a row" in guard.reason_to_stop(True)


@pytest.mark.parametrize("policy, limit, option", [("ignore", 3, "on_nonfinite"),
                                                   ("skip", 0, "max_nonfinite")])
def test_bad_policy_is_a_config_error(policy, limit, option):
    with pytest.raises(ConfigError, match=option):
        resilience.NonfiniteGuard(policy, limit)


# ----------------------------------------------------------------------------- storage probes


def test_run_folder_that_cannot_exist_is_found(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # Root ignores permission bits; a path under a regular file fails for every user.
    with pytest.raises(resilience.StorageError, match="a_file/run"):
        resilience.check_writable(blocker / "run")


def test_full_run_folder_is_found_by_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(resilience.StorageError, match="No space left on device"):
        resilience.check_writable(tmp_path / "run")
    assert not list((tmp_path / "run").iterdir())  # the probe file is not left behind


def test_free_space_below_what_checkpoints_need_is_found(tmp_path, monkeypatch):
    state_bytes, best_bytes = 300 * 2**20, 50 * 2**20
    needed = 4 * state_bytes + 2 * best_bytes
    usage = type("Usage", (), {})
    usage.free = needed - 1
    monkeypatch.setattr(resilience.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(resilience.StorageError, match="keep_checkpoints"):
        resilience.check_free_space(tmp_path, state_bytes, best_bytes, keep=3)
    usage.free = needed
    resilience.check_free_space(tmp_path, state_bytes, best_bytes, keep=3)


def test_state_size_counts_every_array():
    tree = {"a": np.zeros((3, 4), np.float32), "b": [jnp.zeros(5, jnp.bfloat16)]}
    assert resilience.tree_bytes(tree) == 3 * 4 * 4 + 5 * 2


# ----------------------------------------------------------------------------- failed writes


def test_replacing_dir_keeps_the_old_folder_when_the_write_fails(tmp_path):
    target = tmp_path / "best"
    with resilience.replacing_dir(target) as staging:
        (staging / "weights").write_text("old")
    with pytest.raises(resilience.StorageError, match="No space left"):
        with resilience.replacing_dir(target) as staging:
            (staging / "weights").write_text("new, half")
            enospc()
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with resilience.replacing_dir(target) as staging:
        (staging / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_folder_left_between_the_two_renames_is_put_back(tmp_path):
    (tmp_path / "best.old").mkdir()
    (tmp_path / "best.old" / "weights").write_text("old")
    resilience.recover_dir(tmp_path / "best")
    assert (tmp_path / "best" / "weights").read_text() == "old"


def test_failed_best_export_leaves_the_previous_best_intact(tmp_path, monkeypatch):
    cfg = config_lib.load("tiny")
    rng = np.random.default_rng(0)
    stats = data_lib.Stats.fit(rng.random((2, 8, 8, 7), np.float32),
                               (rng.random((2, 8, 8)) < 0.3).astype(np.uint8))
    variables = {"params": {"w": rng.normal(size=(3, 3)).astype(np.float32)}, "batch_stats": {}}
    train.export_best(tmp_path, cfg, stats, variables, {"miou": 0.5})
    before = {p.name: p.read_bytes() for p in (tmp_path / "best").iterdir()}
    monkeypatch.setattr(weights, "save", enospc)
    with pytest.raises(resilience.StorageError, match="No space left"):
        train.export_best(tmp_path, cfg, stats, variables, {"miou": 0.9})
    assert {p.name: p.read_bytes() for p in (tmp_path / "best").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    manager = train.checkpoint_manager(tmp_path / "checkpoints", keep=1)
    state = {"w": jnp.arange(6.0)}
    train.save_checkpoint(manager, 3, state, {"epoch": 1})
    manager.wait_until_finished()
    # The write fails at its end (orbax writes to a temporary folder, then renames it).
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", enospc_async)
    with pytest.raises(resilience.StorageError, match="No space left"):
        train.save_checkpoint(manager, 6, {"w": jnp.arange(6.0) + 1}, {"epoch": 2})
        train.finish_checkpoints(manager)
    monkeypatch.undo()
    rerun = train.checkpoint_manager(tmp_path / "checkpoints", keep=1)
    assert rerun.all_steps() == [3]
    restored = rerun.restore(3, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"w": jnp.zeros(6)}), meta=ocp.args.JsonRestore()))
    np.testing.assert_array_equal(restored.state["w"], np.arange(6.0))
    assert json.loads(json.dumps(restored.meta)) == {"epoch": 1}


async def enospc_async(self):
    enospc()


def saved_steps(folder, steps) -> ocp.CheckpointManager:
    """A checkpoint folder with the state {"w": step} saved at each of `steps`."""
    manager = train.checkpoint_manager(folder, keep=len(steps))
    for step in steps:
        train.save_checkpoint(manager, step, {"w": jnp.full(4, float(step))}, {"epoch": step})
    manager.wait_until_finished()
    return train.checkpoint_manager(folder, keep=len(steps))


def blank(step_dir) -> None:
    """Empties every file of a checkpoint, as a disk fault or an interrupted copy leaves it."""
    for path in step_dir.rglob("*"):
        if path.is_file():
            path.write_bytes(b"")


def test_unreadable_latest_checkpoint_is_set_aside_and_written_again(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    manager = saved_steps(folder, [3, 6])
    blank(folder / "6")
    state, meta = train.restore_latest(manager, {"w": jnp.zeros(4)})
    np.testing.assert_array_equal(state["w"], np.full(4, 3.0))
    assert meta == {"epoch": 3}
    assert (folder / "6.unreadable").is_dir() and not (folder / "6").exists()
    assert "moved the unreadable checkpoint" in caplog.text
    assert manager.all_steps() == [3]
    train.save_checkpoint(manager, 6, {"w": jnp.full(4, 7.0)}, {"epoch": 6})
    manager.wait_until_finished()
    assert train.checkpoint_manager(folder, keep=2).all_steps() == [3, 6]


def test_no_readable_checkpoint_stops_instead_of_starting_over(tmp_path):
    folder = tmp_path / "checkpoints"
    manager = saved_steps(folder, [3, 6])
    blank(folder / "3")
    blank(folder / "6")
    with pytest.raises(UserError) as error:
        train.restore_latest(manager, {"w": jnp.zeros(4)})
    assert str(folder) in str(error.value) and "--workdir" in str(error.value)
    assert sorted(p.name for p in folder.iterdir()) == ["3", "6"]  # left as they were


def test_checkpoint_not_written_by_orbax_is_an_error(tmp_path):
    manager = saved_steps(tmp_path / "checkpoints", [6])
    with pytest.raises(resilience.StorageError, match="already holds a later step"):
        train.save_checkpoint(manager, 3, {"w": jnp.zeros(4)}, {"epoch": 3})
