"""Where arrays live, for training, prediction and the benchmarks alike.

One device mesh over every device of every process with one axis, ``data``: batches are split
along it, weights and optimiser state are replicated. Each process loads an equal share of every
global batch (its block of rows, in process order, as jax.make_array_from_process_local_data
assembles them). Batch sizes are either checked against the device count (training, where the
size is part of the recipe) or rounded up to it (evaluation and prediction, which pad).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxswin.errors import ConfigError

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Placement:
    """The device mesh: batches split on the ``data`` axis, everything else replicated."""

    mesh: Mesh

    @classmethod
    def all_devices(cls) -> Placement:
        return cls(Mesh(np.asarray(jax.devices()), (AXIS,)))

    @property
    def data(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def shard(self, local_batch: dict) -> dict:
        """This process's rows -> global arrays sharded over every device of every process."""
        return {
            k: jax.make_array_from_process_local_data(self.data, v) for k, v in local_batch.items()
        }


def training_placement(global_batch_size: int, option: str = "train.batch_size") -> Placement:
    """The mesh for a global batch that must split evenly over the devices (no padding)."""
    devices = jax.device_count()
    if global_batch_size % devices:
        raise ConfigError(
            f"{option}={global_batch_size} does not split evenly over {devices} devices "
            f"({jax.process_count()} processes); use a multiple of {devices}"
        )
    return Placement.all_devices()


def round_up(batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the device count (for batches that are padded)."""
    devices = jax.device_count()
    return math.ceil(batch_size / devices) * devices


def is_main() -> bool:
    """Process 0: the one that writes files and logs."""
    return jax.process_index() == 0


def process_layout(index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """(this process's index, the number of processes); JAX's unless given."""
    return (jax.process_index() if index is None else index,
            jax.process_count() if count is None else count)


def local_share(global_batch_size: int, process_count: int) -> int:
    """Rows of each global batch one process loads."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ConfigError(
            f"batch size {global_batch_size} must be a positive multiple of the "
            f"{process_count} JAX process(es), each loading an equal share"
        )
    return global_batch_size // process_count


def process_slot(count, index) -> tuple[int, int]:
    """(process count, this process's id) as integers, the id in 0..count-1."""
    try:
        count, index = int(count), int(index)
    except ValueError:
        raise ConfigError(f"JAX_NUM_PROCESSES={count!r}, JAX_PROCESS_ID={index!r}: both must be "
                          "whole numbers") from None
    if count < 1:
        raise ConfigError(f"--num-processes {count}: must be at least 1")
    if not 0 <= index < count:
        raise ConfigError(f"--process-id {index}: must be in 0..{count - 1} for --num-processes "
                          f"{count}, each process with its own id")
    return count, index


def sync(name: str) -> None:
    """Every process waits here for the others (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def init_distributed(
    address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    detect: bool = False,
    heartbeat_timeout: int = 100,
) -> None:
    """Joins a multi-host run when asked by arguments or the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or with `detect` on SLURM /
    Open MPI / TPU pods, where JAX finds the cluster itself. A process that sends no heartbeat
    for `heartbeat_timeout` seconds counts as dead (jaxswin.resilience.exit_if_peer_lost).
    Options that do not make a process layout, and a cluster JAX cannot join, are ConfigErrors."""
    address = address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
    given = [address, count, index]
    if not detect and all(value is None for value in given):
        return
    if any(value is not None for value in given):
        if any(value is None for value in given):
            raise ConfigError(
                "a multi-process run needs --coordinator-address, --num-processes and "
                "--process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID) "
                "together"
            )
        count, index = process_slot(count, index)
        asked = f"--coordinator-address {address} --num-processes {count} --process-id {index}"
        fix = ("check that every process is given the same address, reachable from all of them, "
               "and its own --process-id")
        join = functools.partial(jax.distributed.initialize, address, count, index)
    else:
        asked = "--distributed"
        fix = ("run it inside a SLURM or Open MPI job or on a TPU pod, or pass "
               "--coordinator-address, --num-processes and --process-id")
        join = jax.distributed.initialize
    try:
        join(heartbeat_timeout_seconds=heartbeat_timeout)
    except (ValueError, RuntimeError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{asked}: cannot join a multi-process run (JAX: {cause}); "
                          f"{fix}") from None
    # Meet once now, while every process is at the same point: CPU collectives (gloo) set up
    # their communicator at the first collective and give up if a process is 30 s late, which
    # a process still compiling its model on a busy host can be.
    multihost_utils.sync_global_devices("jaxswin: processes joined")
