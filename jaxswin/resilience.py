"""What keeps a long run alive and honest: stop requests (SIGTERM/SIGINT), the policy for
non-finite steps, lost peers of a multi-process run, and run-folder storage faults.

Exit codes of ``python -m jaxswin.train`` (besides 0, finished):

    2   bad input: options, data, or a run folder that cannot be written (errors.UserError)
    3   diverged: non-finite loss or gradients under train.on_nonfinite (Diverged)
    4   a process of a multi-process run was lost (exit_if_peer_lost)
    75  preempted: SIGTERM/SIGINT saved a checkpoint; rerun the same command to resume
        (EX_TEMPFAIL of sysexits.h, "try again later")
    130 a second SIGINT/SIGTERM while the first was being handled: stopped at once
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxswin.errors import ConfigError, RunStopped, UserError

EXIT_DIVERGED = 3
EXIT_LOST_PEER = 4
EXIT_PREEMPTED = 75

NONFINITE_POLICIES = ("stop", "skip")


class Diverged(RunStopped):
    exit_code = EXIT_DIVERGED


class Preempted(RunStopped):
    exit_code = EXIT_PREEMPTED
    prefix = "stopped"


class StorageError(UserError):
    """A folder cannot hold what is written to it (a run, converted weights): not writable,
    full, or a write failed."""


# ----------------------------------------------------------------------------- stop requests


class StopSignals:
    """SIGTERM and SIGINT set a flag that the training loop polls between steps, so it can save
    a checkpoint at the current step and exit; a second signal stops at once (KeyboardInterrupt).
    Use as a context manager around the loop; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def requested(self) -> bool:
        """True once any process got a stop signal. Every process of a run must call this at
        the same steps: the signal may reach one process only, and all must stop together
        (one tiny all-gather of a flag per step)."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
        return bool(np.any(flags))


# ----------------------------------------------------------------------------- non-finite steps


def check_policy(policy: str, limit: int) -> None:
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"train.on_nonfinite={policy!r}: choose \"stop\" or \"skip\"")
    if limit < 1:
        raise ConfigError(f"train.max_nonfinite={limit}: must be at least 1")


class NonfiniteGuard:
    """Applies train.on_nonfinite to each step's `nonfinite` flag, in order.

    "stop": the first non-finite step stops the run. "skip": the step's update was already
    dropped by the train step; the run stops only after `limit` such steps in a row.
    """

    def __init__(self, policy: str, limit: int):
        check_policy(policy, limit)
        self.policy, self.limit, self.in_a_row = policy, limit, 0

    def reason_to_stop(self, nonfinite: bool) -> str | None:
        if not nonfinite:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        if self.policy == "stop":
            return 'non-finite loss or gradients (train.on_nonfinite="stop")'
        if self.in_a_row >= self.limit:
            return (f"{self.in_a_row} non-finite steps in a row, all skipped "
                    f"(train.max_nonfinite={self.limit})")
        return None


# ----------------------------------------------------------------------------- lost peers


def exit_if_peer_lost(err: BaseException, heartbeat_timeout: int) -> None:
    """After an error in a multi-process run: if a process is gone, say which and exit with
    EXIT_LOST_PEER; return if every process is alive or the coordinator does not answer in time
    (the error is then the caller's to raise).

    The JAX coordination service declares a process dead once it has missed heartbeats for
    `heartbeat_timeout` seconds (jax.distributed.initialize(heartbeat_timeout_seconds=...));
    asking it for the live processes returns then. If the coordinator itself (process 0) is
    gone, JAX's own error polling ends this process first with a message naming the leader.
    """
    from jax._src import distributed  # the client of jax.distributed.initialize

    client = distributed.global_state.client
    if client is None or isinstance(err, (UserError, RunStopped)):
        return
    count, me = jax.process_count(), jax.process_index()
    answer: dict = {}

    def ask() -> None:
        try:
            answer["live"] = set(client.get_live_nodes(list(range(count))))
        except Exception as failure:  # noqa: BLE001 - the coordinator is unreachable
            answer["failure"] = failure

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(heartbeat_timeout + 30)
    if "live" in answer:
        lost = sorted(set(range(count)) - answer["live"])
        if not lost:
            return
        who = ", ".join(str(p) for p in lost)
        detail = f"no heartbeat for {heartbeat_timeout} s"
    elif "failure" in answer:
        who, detail = "0 (the coordinator)", "unreachable"
    else:  # every process may be alive, the others busy elsewhere: not a lost peer
        return
    cause = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    print(f"error: process {me} of {count}: lost process {who} ({detail}; here: {cause}). "
          "Rerun the same command on every process to resume from the last checkpoint.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: interpreter shutdown would wait at JAX's shutdown barrier for the lost peer.
    os._exit(EXIT_LOST_PEER)


# ----------------------------------------------------------------------------- storage


def storage_error(what: str, path: Path, err: OSError, option: str = "--workdir") -> StorageError:
    """The error for a failed write, its fix naming `option`, the one that chose `path`."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free some space" if full else "fix its permissions"
    fix += f" or choose another {option}"
    return StorageError(f"{what} {path}: {reason}; {fix}")


@contextlib.contextmanager
def writing(what: str, path: Path, option: str = "--workdir"):
    """An OSError in the block (disk full, permissions) becomes a StorageError naming `path`
    and `option`."""
    try:
        yield
    except OSError as err:
        raise storage_error(f"cannot write {what}", path, err, option) from None


def check_writable(folder: Path) -> None:
    """Creates `folder` and writes, syncs and removes a probe file in it: a read-only, missing
    or full run folder is found before any training."""
    probe = folder / f".write-probe-{jax.process_index()}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise storage_error("cannot write to the run folder", folder, err) from None


def tree_bytes(tree) -> int:
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)
               if hasattr(leaf, "dtype"))


def check_free_space(folder: Path, state_bytes: int, best_bytes: int, keep: int) -> None:
    """Fails if the run folder's file system lacks room for what the run writes: `keep`
    checkpoints of the train state plus one being written, and best/ twice (old and new)."""
    needed = (keep + 1) * state_bytes + 2 * best_bytes
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StorageError(
            f"the run folder {folder} has {free / 2**20:.0f} MiB free, the run needs about "
            f"{needed / 2**20:.0f} MiB ({keep} checkpoints of {state_bytes / 2**20:.0f} MiB + one "
            f"being written, best/ {best_bytes / 2**20:.0f} MiB twice); free some space, lower "
            "train.keep_checkpoints or choose another --workdir"
        )


@contextlib.contextmanager
def replacing_dir(target: Path):
    """Yields a staging folder; when the block succeeds it replaces `target` (rename, then
    the old copy is removed), when it fails `target` is untouched and the staging is removed.
    A crash between the two renames leaves `<target>.old`, which recover_dir puts back."""
    staging = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        yield staging
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        recover_dir(target)
        raise storage_error("cannot write", target, err) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(target: Path) -> None:
    """Puts back `<target>.old` left by a replacing_dir interrupted between its renames."""
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        old.rename(target)
