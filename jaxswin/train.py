"""Training: ``python -m jaxswin.train --fold K``.

Reads like the flax examples: a :class:`TrainState`, a pure :func:`train_step` and
:func:`eval_step` (jitted and sharded by :func:`make_train_step` / :func:`make_eval_step`), and
a loop (:func:`train_fold`) that only orchestrates named steps: open the run folder, load the
fold's data and statistics, initialise or restore the state, then per epoch train, score the raw
and EMA weights on the held-out fold and end the epoch (export the better as the fold's best,
logs, an orbax checkpoint). The same command run again resumes from the latest checkpoint.
Batches are sharded data-parallel over every device of every host (:mod:`jaxswin.parallel`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import dynamic_scale as dynamic_scale_lib
from flax.training import train_state

from jaxswin import cli as cli_lib
from jaxswin import config as config_lib
from jaxswin import console, losses, metrics, models, parallel, resilience, runtime, weights
from jaxswin import data as data_lib
from jaxswin.data.dataset import cache_dir
from jaxswin.errors import ConfigError, UserError, cli
from jaxswin.models import swinv2

log = logging.getLogger("jaxswin.train")

# ----------------------------------------------------------------------------- state and steps


class TrainState(train_state.TrainState):
    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    # Dynamic loss scaling, fp16 only (None otherwise).
    dynamic_scale: dynamic_scale_lib.DynamicScale | None = None


def warmup_steps(tcfg: config_lib.TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, total steps) of a run."""
    total = max(1, tcfg.epochs * steps_per_epoch)
    return min(total - 1, round(tcfg.warmup_epochs * steps_per_epoch)), total


def make_schedule(tcfg: config_lib.TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate of update n: `lr` times max(n / warmup, warmup_start) during the
    warm-up, then lr_floor + (1 - lr_floor) * cosine from 1 down to 0 at the last step
    (warmup_start = lr_floor = 0: a warm-up from 0 and a cosine to 0; the authors' code: 0.01
    and 0.05)."""
    warmup, total = warmup_steps(tcfg, steps_per_epoch)

    def warm(step):
        return tcfg.lr * jnp.maximum(step / max(warmup, 1), tcfg.warmup_start)

    cosine = optax.cosine_decay_schedule(tcfg.lr, decay_steps=total - warmup, alpha=tcfg.lr_floor)
    return optax.join_schedules([warm, cosine], [warmup])


def make_ema_decay(tcfg: config_lib.TrainConfig, steps_per_epoch: int) -> optax.Schedule | None:
    """The EMA decay of update n (None without EMA): `ema_decay`, or with ema_warmup_mean
    min(ema_decay, 1 - 1/(n+1)) during the warm-up steps, so that the average starts as the
    running mean of the weights after each update and the initial weights never enter it."""
    if not tcfg.ema:
        return None
    warmup, _ = warmup_steps(tcfg, steps_per_epoch)
    if not tcfg.ema_warmup_mean:
        return optax.constant_schedule(tcfg.ema_decay)
    return lambda n: jnp.where(n < warmup, jnp.minimum(tcfg.ema_decay, 1.0 - 1.0 / (n + 1.0)),
                               tcfg.ema_decay)


# Parameters timm's recipe never decays besides vectors (norms, biases): SwinV2's attention
# temperatures and the continuous position bias MLP (whose output is the position table).
NO_DECAY_NAMES = ("logit_scale", "cpb_")
DECAY_MASKS = ("none", "timm")


def decay_mask(params, rule: str):
    """Which parameters AdamW decays: None (all: the paper's recipe) for "none"; for "timm",
    every parameter except those of at most one dimension and those named in NO_DECAY_NAMES,
    as timm's param_groups_weight_decay with SwinV2's no_weight_decay()."""
    if rule not in DECAY_MASKS:
        raise ConfigError(f"train.decay_mask={rule!r}: choose one of {', '.join(DECAY_MASKS)}")
    if rule == "none":
        return None

    def decayed(path, leaf) -> bool:
        name = jax.tree_util.keystr(path)
        return len(leaf.shape) > 1 and not any(part in name for part in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decayed, params)


def create_state(
    module, variables, tcfg: config_lib.TrainConfig, steps_per_epoch: int, precision: str
) -> TrainState:
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    tx = optax.adamw(make_schedule(tcfg, steps_per_epoch), weight_decay=tcfg.weight_decay,
                     mask=decay_mask(params, tcfg.decay_mask))
    return TrainState.create(
        apply_fn=module.apply,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        # An overflow at scale 1 cannot be scaled away: the floor where fp16 overflow is divergence.
        dynamic_scale=(dynamic_scale_lib.DynamicScale(minimum_scale=1.0) if precision == "fp16"
                       else None),
    )


def train_step(state: TrainState, batch: dict, pos_weight, base_key, *, loss_name: str,
               ema_decay: optax.Schedule | None, schedule: optax.Schedule,
               ema_batch_stats: bool = True, dice: str = "batch"):
    """One optimisation step; pure. Returns the new state and scalar metrics.

    `ema_decay` maps the update count to the EMA decay (make_ema_decay; None: no EMA). With
    `ema_batch_stats` false the EMA weights take the raw model's BatchNorm statistics.
    """
    loss_fn = losses.get(loss_name, dice)
    key = jax.random.fold_in(base_key, state.step)
    if "warp" in batch:  # the loader left the geometric augmentation to the device
        batch = data_lib.augment.warp(batch)

    def objective(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["rgb"], batch["aux"], train=True, rngs={"dropout": key}, mutable=["batch_stats"],
        )
        loss = loss_fn(logits.astype(jnp.float32), batch["mask"], pos_weight)
        # The loss rides along unscaled too: fp16 loss scaling multiplies only the first output.
        return loss, (loss, updates["batch_stats"])

    if state.dynamic_scale is not None:
        grad_fn = state.dynamic_scale.value_and_grad(objective, has_aux=True)
        dynamic_scale, grads_finite, (_, (loss, batch_stats)), grads = grad_fn(state.params)
    else:
        (_, (loss, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        dynamic_scale = None
    grad_norm = optax.tree.norm(grads)
    if dynamic_scale is None:
        # Any inf or NaN makes the norm non-finite; so does a norm beyond fp32's range (1.8e19),
        # which is divergence too. One reduction instead of a second pass over every gradient.
        grads_finite = jnp.isfinite(grad_norm)
    loss_finite = jnp.isfinite(loss)
    finite = loss_finite & grads_finite
    overflow = jnp.array(False)
    if dynamic_scale is not None:
        # Under fp16, scaled gradients that overflow while the loss is finite are a loss-scale
        # event (the scale halves, the step is skipped), not divergence, until the scale is at
        # its floor. A non-finite loss is divergence at any scale and leaves the scale alone.
        overflow = loss_finite & ~grads_finite & (
            state.dynamic_scale.scale > state.dynamic_scale.minimum_scale)
        dynamic_scale = jax.tree.map(functools.partial(jnp.where, loss_finite), dynamic_scale,
                                     state.dynamic_scale)

    def updated(state: TrainState) -> TrainState:
        stepped = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        if ema_decay is None:
            return stepped
        # ema = decay * ema + (1 - decay) * new weights
        ema = functools.partial(optax.incremental_update, step_size=1.0 - ema_decay(state.step))
        ema_stats = ema(stepped.batch_stats, state.ema_batch_stats) if ema_batch_stats else (
            stepped.batch_stats)
        return stepped.replace(ema_params=ema(stepped.params, state.ema_params),
                               ema_batch_stats=ema_stats)

    # A step with non-finite loss or gradients changes nothing but the step count (and the
    # fp16 scale): params, optimiser state, BN statistics and EMA stay as they were. A branch,
    # not a select per array: with the selects XLA's CPU backend ran the paper model's update
    # (AdamW, EMA, guard) in 391 ms instead of 126 (AMD EPYC, 2 cores).
    stepped = jax.lax.cond(finite, updated, lambda state: state.replace(step=state.step + 1),
                           state)
    stepped = stepped.replace(dynamic_scale=dynamic_scale)
    scale = dynamic_scale.scale if dynamic_scale is not None else jnp.array(1.0)
    return stepped, {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": schedule(state.step),
        "loss_scale": scale,
        "step": state.step,  # this step's index, from 0
        "finite": finite,  # the update was applied
        "nonfinite": ~finite & ~overflow,  # divergence: counted against train.on_nonfinite
    }


def eval_step(apply_fn, variables: dict, batch: dict, pos_weight, threshold, *, loss_name: str,
              dice: str = "batch"):
    """Confusion counts and the weighted loss sum of one (padded) batch; pure."""
    logits = apply_fn(variables, batch["rgb"], batch["aux"], train=False).astype(jnp.float32)
    weight = batch["weight"]
    per_tile = jax.vmap(
        lambda lg, m: losses.get(loss_name, dice)(lg[None], m[None], pos_weight)
    )(logits, batch["mask"])
    pred = jax.nn.sigmoid(logits) > threshold
    return {
        "counts": metrics.confusion(pred, batch["mask"] > 0.5, weight),
        "loss_sum": jnp.sum(per_tile * weight),
        "tiles": jnp.sum(weight),
    }


def make_train_step(tcfg: config_lib.TrainConfig, steps_per_epoch: int,
                    placement: parallel.Placement | None = None):
    """`train_step` for this recipe, jitted: fn(state, batch, pos_weight, dropout_key) ->
    (state, metrics), the batch split over the mesh's data axis, the rest replicated, the input
    state's buffers donated. Batches may be global arrays or (one process) numpy arrays."""
    placement = placement or parallel.Placement.all_devices()
    step = functools.partial(
        train_step, loss_name=tcfg.loss, ema_decay=make_ema_decay(tcfg, steps_per_epoch),
        schedule=make_schedule(tcfg, steps_per_epoch), ema_batch_stats=tcfg.ema_batch_stats,
        dice=tcfg.dice,
    )
    replicated = placement.replicated
    return jax.jit(step, in_shardings=(replicated, placement.data, replicated, replicated),
                   out_shardings=replicated, donate_argnums=0)


def make_eval_step(apply_fn, loss_name: str, placement: parallel.Placement | None = None,
                   dice: str = "batch"):
    """`eval_step` jitted: fn(variables, batch, pos_weight, threshold) -> counts and loss sums,
    sharded as :func:`make_train_step`."""
    placement = placement or parallel.Placement.all_devices()
    replicated = placement.replicated
    return jax.jit(functools.partial(eval_step, apply_fn, loss_name=loss_name, dice=dice),
                   in_shardings=(replicated, placement.data, replicated, replicated),
                   out_shardings=replicated)


# ----------------------------------------------------------------------------- run folder


def fold_dirname(fold) -> str:
    return "official" if fold == "official" else f"fold{fold}"


RUN_FILE_FIX = "move it aside or choose another --workdir"  # for a run folder's damaged files


def open_run(cfg: config_lib.Config, fold, workdir: Path, pretrained: str | None = None) -> Path:
    """The fold's run folder, refusing one that holds a run of another configuration or started
    from other weights than a given `pretrained` (resuming needs none). A folder without any checkpoint holds nothing to resume
    (a start that failed before its first checkpoint, such as on a bad option): it takes the new
    configuration and weights."""
    fold_dir = workdir / fold_dirname(fold)
    resilience.check_writable(fold_dir)  # a read-only or full folder fails here, not at epoch 1
    config_text = config_lib.to_toml(cfg)
    saved_config, saved_start = fold_dir / "config.toml", fold_dir / "pretrained.json"
    start = starting_weights(pretrained)
    resumable = has_checkpoint(fold_dir / "checkpoints")
    if saved_config.exists() and config_lib.read_text(saved_config, RUN_FILE_FIX) != config_text:
        if resumable:
            raise ConfigError(
                f"{fold_dir} holds a run with a different configuration ({saved_config}); "
                "rerun with the same options to resume it, or choose another --workdir"
            )
        log.info("%s holds no checkpoint of its earlier configuration: it takes this one",
                 fold_dir)
    if resumable and saved_start.exists():
        earlier = read_starting_weights(saved_start)
        if pretrained is None:  # the checkpoint holds the weights; the record stays
            start = earlier
        elif earlier["sha256"] != start["sha256"]:
            raise ConfigError(
                f"{fold_dir} holds a run that started from {describe_start(earlier)}, not from "
                f"{describe_start(start)}; a resumed run continues from its checkpoint, so rerun "
                f"with {start_option(earlier)} to resume it, or choose another --workdir"
            )
    parallel.sync("jaxswin.train: run config checked")  # every process read it before 0 writes
    if parallel.is_main():
        saved_config.write_text(config_text)
        saved_start.write_text(json.dumps(start, indent=2) + "\n")
        resilience.recover_dir(fold_dir / "best")
    return fold_dir


def starting_weights(pretrained: str | None) -> dict:
    """What a run starts from, recorded in its folder: the --pretrained file and its SHA-256
    (which identifies it wherever it moves), both None for random weights."""
    if not pretrained:
        return {"pretrained": None, "sha256": None}
    try:
        with open(pretrained, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()  # about 1 s per GB
    except OSError as err:
        raise UserError(f"--pretrained {pretrained}: cannot be read ({err.strerror}); make it "
                        "readable or pass another file") from None
    return {"pretrained": str(Path(pretrained).resolve()), "sha256": digest}


def read_starting_weights(path: Path) -> dict:
    record = decode_record(config_lib.read_text(path, RUN_FILE_FIX))
    if record is None or not {"pretrained", "sha256"} <= record.keys():
        raise ConfigError(f"{path}: not a record of the run's starting weights; {RUN_FILE_FIX}")
    return record


def describe_start(start: dict) -> str:
    if start["pretrained"] is None:
        return "random weights (no --pretrained)"
    return f"--pretrained {start['pretrained']} (sha256 {start['sha256'][:12]})"


def start_option(start: dict) -> str:
    """The --pretrained option a rerun needs to start as `start` did."""
    if start["pretrained"] is None:
        return "no --pretrained"
    return f"--pretrained {start['pretrained']}"


def has_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint (orbax names each folder by its step)."""
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState):
    """The newest readable checkpoint as (state, meta), (None, None) without any checkpoint.

    Newer ones that cannot be read are moved aside (set_aside_unreadable), so that the run writes
    those steps again; if none can be read, the run stops rather than start over beside them."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
            log.warning("checkpoint %s in %s is unreadable (%s: %s)", step, manager.directory,
                        type(err).__name__, str(err)[:200])
            unreadable.append(step)
            continue
        set_aside_unreadable(manager, unreadable)
        return restored.state, restored.meta
    if unreadable:
        folder = Path(manager.directory)
        raise UserError(
            f"none of the checkpoints in {folder} can be read (steps "
            f"{', '.join(map(str, sorted(unreadable)))}), so the run cannot resume; choose "
            f"another --workdir (this one stays as it is), or move {folder} aside to train the "
            "fold here again from scratch (replacing its best/ and logs)"
        )
    return None, None


def set_aside_unreadable(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Renames the folders of unreadable checkpoints to `<step>.unreadable`, kept for a look:
    orbax no longer counts them, so the resumed run saves those steps again (orbax skips a step
    at or before the latest it holds)."""
    if not steps:
        return
    folder = Path(manager.directory)
    if parallel.is_main():
        for step in steps:
            aside = folder / f"{step}.unreadable"
            with resilience.writing("the unreadable checkpoint aside to", aside):
                (folder / str(step)).rename(aside)
            log.warning("moved the unreadable checkpoint %s aside to %s; the run writes step %s "
                        "again", folder / str(step), aside, step)
    parallel.sync("jaxswin.train: unreadable checkpoints set aside")
    manager.reload()


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Checkpoints `state` under its global `step` with `meta` (see restore_or_start); orbax
    writes into a temporary folder and renames it when complete, so a failed write leaves the
    earlier checkpoints as they were. A step already saved is not saved again."""
    latest = manager.latest_step()
    if latest == step:
        return
    with resilience.writing("a checkpoint to", Path(manager.directory)):
        saved = manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)))
    if not saved:  # orbax skips a step before the latest it holds
        raise resilience.StorageError(
            f"cannot write the checkpoint of step {step} to {manager.directory}: it already holds "
            f"a later step ({latest}); move it aside or choose another --workdir"
        )


def finish_checkpoints(manager: ocp.CheckpointManager) -> None:
    """Waits for the checkpoint being written in the background (its failure surfaces here)."""
    with resilience.writing("a checkpoint to", Path(manager.directory)):
        manager.wait_until_finished()


def describe_checkpoint(manager: ocp.CheckpointManager, steps_per_epoch: int) -> str:
    step = manager.latest_step()
    if step is None:
        return "none yet (a rerun starts from scratch)"
    epoch, in_epoch = divmod(step, steps_per_epoch)
    where = f"after epoch {epoch}" if not in_epoch else f"epoch {epoch + 1}, after step {in_epoch}"
    return f"{Path(manager.directory) / str(step)} ({where})"


def export_best(fold_dir: Path, cfg: config_lib.Config, stats, variables: dict, scores: dict):
    """Writes best/ (weights, config, normalisation statistics, scores) for jaxswin.predict;
    the previous best/ is replaced only once the new one is complete (a failed write leaves it)."""
    with resilience.replacing_dir(fold_dir / "best") as staging:
        weights.save(
            staging / "model.safetensors",
            jax.device_get(variables),
            {"format": "jaxswin-model", "config": config_lib.to_toml(cfg)},
        )
        (staging / "config.toml").write_text(config_lib.to_toml(cfg))
        stats.save(staging / "stats.json")
        (staging / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")


class RunLog:
    """The fold's logs: steps.jsonl, metrics.jsonl, curves.png and, if asked for, TensorBoard
    event files under tensorboard/; written by process 0 only.

    Opening it drops the records after the checkpoint the run resumes from (it redoes the rest).
    """

    def __init__(self, fold_dir: Path, completed_epochs: int, completed_steps: int,
                 tensorboard: bool = False):
        self.fold_dir, self.main = fold_dir, parallel.is_main()
        self.history: list[dict] = []
        self.writer = None
        if self.main:
            self.history = truncate_log(fold_dir / "metrics.jsonl",
                                        lambda r: r["epoch"] <= completed_epochs)
            truncate_log(fold_dir / "steps.jsonl", lambda r: r["step"] < completed_steps)
        if self.main and tensorboard:
            from tensorboardX import SummaryWriter

            # On resuming, TensorBoard drops what the interrupted run logged past the last
            # completed epoch (purge_step), as the .jsonl logs are truncated.
            purge_step = completed_epochs + 1 if completed_epochs else None
            self.writer = SummaryWriter(str(fold_dir / "tensorboard"), purge_step=purge_step)

    def step(self, epoch: int, step_metrics: dict) -> dict:
        """Fetches one step's metrics from the device, logs and returns them."""
        values = {k: v.item() for k, v in jax.device_get(step_metrics).items()}
        values["finite"], values["nonfinite"] = bool(values["finite"]), bool(values["nonfinite"])
        self._append("steps.jsonl", {"epoch": epoch + 1, **values})
        return values

    def epoch(self, record: dict) -> None:
        self.history.append(record)
        self._append("metrics.jsonl", record)
        if self.main:
            write_curves(self.fold_dir / "curves.png", self.history)
        if self.writer is not None:
            for tag, value in epoch_scalars(record).items():
                self.writer.add_scalar(tag, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _append(self, name: str, record: dict) -> None:
        if self.main:
            with open(self.fold_dir / name, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def epoch_scalars(record: dict) -> dict[str, float]:
    """An epoch record as TensorBoard tags: train/loss, train/lr, ..., raw/miou, ema/f1, ..."""
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update({f"{key}/{k}": v for k, v in value.items()})
        elif key not in ("epoch", "step") and isinstance(value, (int, float)):
            scalars[f"train/{key}"] = value
    return scalars


def truncate_log(path: Path, keep) -> list[dict]:
    """Keeps the records of a .jsonl log for which `keep(record)` holds and returns them. Lines
    at its end that are no record (an append cut short by a kill or a full disk) are dropped with
    a warning; such a line before a record is an error."""
    if not path.exists():
        return []
    # Undecodable bytes too are what a cut-short append can leave.
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = [decode_record(line) for line in lines]
    complete = len(records)
    while complete and records[complete - 1] is None:
        complete -= 1
    if complete < len(records):
        log.warning("%s: dropped %d line(s) at its end that are no JSON record (an append cut "
                    "short)", path, len(records) - complete)
    if None in records[:complete]:
        raise UserError(
            f"{path}: line {records.index(None) + 1} is not a JSON record, but records follow "
            "it; repair or delete that line, or choose another --workdir"
        )
    records = [r for r in records[:complete] if keep(r)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def decode_record(line: str) -> dict | None:
    """The JSON object on a log line, None if the line holds none."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def write_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_iou, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["raw"]["loss"] for h in history], label="held-out (raw)")
    ax_loss.set_title("loss")
    for kind in ("raw", "ema"):
        if all(kind in h for h in history):
            ax_iou.plot(epochs, [h[kind]["miou"] for h in history], label=f"{kind} mIoU")
            ax_iou.plot(epochs, [h[kind]["f1"] for h in history], "--", label=f"{kind} F1")
    ax_iou.set_title("held-out fold")
    ax_lr.plot(epochs, [h["lr"] for h in history])
    ax_lr.set_title("learning rate (end of epoch)")
    for ax in (ax_loss, ax_iou, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_iou.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class FoldData:
    """One fold's tiles (percentile-scaled, in memory), its split and normalisation statistics."""

    images: np.ndarray
    masks: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    stats: data_lib.Stats
    steps_per_epoch: int
    # Which split it is: held_out ("random fold", "spatial fold" or "official split"), folds
    # (data.folds), train_tiles, held_out_tiles and dropped_tiles (a spatial fold's buffer).
    split: dict


def open_training_data(cfg: config_lib.Config) -> data_lib.Dataset:
    """The labelled dataset cfg.data names, its band order checked (data.band_check). Opened
    once per command, so that its warnings are said once."""
    dataset = data_lib.open_dataset(cfg.data.root or None, cfg.data.bands, cfg.model.img_size,
                                    cfg.data.resize)
    data_lib.inspect.check_dataset(dataset, cfg.data.band_check)
    if dataset.unlabelled:
        log.info(dataset.describe_unlabelled())
    return dataset


def load_fold_data(cfg: config_lib.Config, dataset: data_lib.Dataset, fold,
                   fold_dir: Path) -> FoldData:
    """Reads `dataset`, splits off the fold and fits the statistics (data.stats: on its
    training tiles, or on all labelled tiles)."""
    # The split first: a fold the data cannot give stops before the images are read.
    train_idx, val_idx = data_lib.folds.split_for(dataset, fold, cfg.data)
    images, masks = dataset.load()
    pool = len(dataset.indices(*data_lib.folds.CV_SPLITS))
    split = {"held_out": data_lib.folds.held_out_kind(cfg.data.folds, fold),
             "folds": cfg.data.folds, "train_tiles": len(train_idx), "held_out_tiles": len(val_idx),
             "dropped_tiles": pool - len(train_idx) - len(val_idx)}
    rows = data_lib.folds.stats_rows(dataset, train_idx, cfg.data.stats)
    stats = data_lib.Stats.fit(images[rows], masks[rows])
    if parallel.is_main():
        stats.save(fold_dir / "stats.json")
    steps = data_lib.loader.steps_per_epoch(len(train_idx), cfg.train.batch_size,
                                            cfg.train.drop_last, jax.device_count())
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    return FoldData(images, masks, train_idx, val_idx, stats, steps, split)


def initial_state(cfg: config_lib.Config, precision: str, steps_per_epoch: int, key,
                  pretrained: str | None) -> TrainState:
    """A fresh state: the model's initial weights, with the converted encoders if given."""
    module = models.build(cfg.model, runtime.PRECISIONS[precision])
    variables = models.init(module, cfg.model, key)
    if pretrained:
        variables = models.load_pretrained(variables, cfg.model, pretrained)
    elif cfg.model.encoder not in swinv2.NOT_IN_TIMM:
        log.warning("no --pretrained weights: both encoders start from RANDOM weights. The paper "
                    "fine-tunes ImageNet SwinV2 weights; convert them with jaxswin-convert timm "
                    "and pass --pretrained FILE.")
    return create_state(module, variables, cfg.train, steps_per_epoch, precision)


def restore_or_start(manager: ocp.CheckpointManager, state: TrainState, fold_dir: Path,
                     steps_per_epoch: int) -> tuple[TrainState, dict]:
    """(state, progress) from the latest checkpoint, else a fresh start. The progress is the
    checkpoint's meta: completed "epoch"s, "step_in_epoch" steps of the next one done (a run
    stopped mid-epoch) with their "partial_steps" records, and the "best" weights so far."""
    restored, meta = restore_latest(manager, state)
    fresh = {"epoch": 0, "step_in_epoch": 0, "partial_steps": [], "best": {"miou": -1.0}}
    if restored is None:
        return state, fresh
    progress = {**fresh, **meta}
    best, epoch, step = progress["best"], progress["epoch"], progress["step_in_epoch"]
    where = (f"in epoch {epoch + 1} after step {step} of {steps_per_epoch}" if step
             else f"after epoch {epoch}")
    log.info("resuming %s %s (best so far: epoch %s, %s weights, mIoU %.4f)",
             fold_dir, where, best.get("epoch"), best.get("weights"), best["miou"])
    return restored, progress


@dataclasses.dataclass(frozen=True)
class FoldRun:
    """What stays fixed over a fold's epochs: config, folder, data, mesh and compiled steps."""

    cfg: config_lib.Config
    fold_dir: Path
    data: FoldData
    placement: parallel.Placement
    train_fn: Any  # make_train_step
    eval_fn: Any  # make_eval_step
    dropout_key: jax.Array
    pos_weight: jax.Array
    threshold: jax.Array
    log: RunLog
    manager: ocp.CheckpointManager
    stop: resilience.StopSignals  # SIGTERM / SIGINT: checkpoint at the current step and exit
    guard: resilience.NonfiniteGuard  # train.on_nonfinite


def train_epoch(run: FoldRun, state: TrainState, epoch: int, bar,
                done: list[dict]) -> tuple[TrainState, list[dict], dict]:
    """The epoch's steps after the `done` ones (a run resumed mid-epoch), each step's metrics
    logged and checked against train.on_nonfinite; returns the state, every step's record and
    the timing. A stop request cuts the epoch short: fewer records than steps_per_epoch."""
    tcfg, data = run.cfg.train, run.data
    epoch_start = time.perf_counter()
    seen, pending, timed_steps, timed_from = list(done), None, 0, None
    batches = data_lib.loader.train_loader(
        data.images, data.masks, data.train_idx, data.stats, global_batch_size=tcfg.batch_size,
        seed=tcfg.seed, epoch=epoch, augment=run.cfg.data.augment, workers=run.cfg.data.workers,
        device_warp=run.cfg.data.device_warp, start_step=len(done), blur=run.cfg.data.blur,
        border=run.cfg.data.affine_border, drop_last=tcfg.drop_last,
        row_multiple=jax.device_count(),
        augment_strength=run.cfg.data.augment_strength,
        band_dropout=run.cfg.data.band_dropout, border_smoothing=run.cfg.data.border_smoothing,
    )
    # enumerate + break (not islice) runs the loader to its end when the epoch is whole, so its
    # worker stream carries on into the next epoch.
    for step_in_epoch, batch in enumerate(batches, start=len(done)):
        if step_in_epoch >= data.steps_per_epoch or run.stop.requested():
            break
        state, step_metrics = run.train_fn(state, run.placement.shard(batch), run.pos_weight,
                                           run.dropout_key)
        if pending is not None:  # read the previous step's metrics while this one runs
            seen.append(record_step(run, epoch, pending))
        pending = step_metrics
        if step_in_epoch == len(done) + 1:  # the first step compiled; time from here
            timed_from = time.perf_counter()
        elif timed_from is not None:
            timed_steps += 1
        rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
        bar.set_postfix(epoch=epoch + 1, loss=f"{seen[-1]['loss']:.4f}" if seen else "...",
                        tiles_s=f"{rate or 0.0:.1f}", refresh=False)
        bar.update(1)
    if pending is not None:
        seen.append(record_step(run, epoch, pending))
    rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
    return state, seen, {"train_seconds": round(time.perf_counter() - epoch_start, 2),
                         "tiles_per_s": round(rate, 2) if rate else None}


def record_step(run: FoldRun, epoch: int, step_metrics: dict) -> dict:
    """Logs a step's metrics; stops the run (Diverged) when train.on_nonfinite says so."""
    values = run.log.step(epoch, step_metrics)
    reason = run.guard.reason_to_stop(values["nonfinite"])
    if reason:
        steps = run.data.steps_per_epoch
        raise resilience.Diverged(
            f"{reason} at epoch {epoch + 1}, step {values['step'] - epoch * steps + 1} of {steps} "
            f"(global step {values['step'] + 1}) in {run.fold_dir}; last good checkpoint: "
            f"{describe_checkpoint(run.manager, steps)}. Lower train.lr, or set "
            'train.on_nonfinite="skip", and train in a new --workdir'
        )
    return values


def summarize_steps(seen: list[dict]) -> dict:
    """The epoch record's training part: mean loss over the steps with a finite loss, the last
    learning rate and loss scale, the skipped steps (fp16 overflow or non-finite) and, of
    those, the non-finite ones."""
    finite_losses = [s["loss"] for s in seen if math.isfinite(s["loss"])]
    return {
        "loss": float(np.mean(finite_losses)) if finite_losses else float("nan"),
        "lr": seen[-1]["lr"],
        "loss_scale": seen[-1]["loss_scale"],
        "skipped_steps": sum(not s["finite"] for s in seen),
        "nonfinite_steps": sum(s["nonfinite"] for s in seen),
    }


def stop_here(run: FoldRun, state: TrainState, epoch: int, seen: list[dict], best: dict):
    """Saves the state at the step reached mid-epoch, with the epoch's records so far, and
    ends the run (Preempted); a rerun continues from this very step."""
    steps = run.data.steps_per_epoch
    meta = {"epoch": epoch, "step_in_epoch": len(seen), "partial_steps": seen, "best": best}
    save_checkpoint(run.manager, epoch * steps + len(seen), state, meta)
    finish_checkpoints(run.manager)
    why = run.stop.received or "another process received a stop signal"
    raise resilience.Preempted(
        f"{why}: saved a checkpoint at epoch {epoch + 1}, step {len(seen)} of {steps} "
        f"({describe_checkpoint(run.manager, steps)}); rerun the same command to resume there"
    )


def tiles_per_second(tiles: int, since: float | None) -> float | None:
    """Training rate from `since` (after the compiling first step) to now; None before it."""
    return tiles / (time.perf_counter() - since) if tiles else None


def candidate_weights(state: TrainState, ema: bool) -> dict[str, dict]:
    """The weights each epoch scores: the raw ones and, with EMA on, their moving average."""
    kinds = {"raw": {"params": state.params, "batch_stats": state.batch_stats}}
    if ema:
        kinds["ema"] = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return kinds


def score(run: FoldRun, variables: dict) -> dict:
    """mIoU, F1 and friends and the mean loss of `variables` on the held-out fold."""
    data, counts = run.data, np.zeros(4, np.float64)
    loss_sum = tiles = 0.0
    batch_size = parallel.round_up(run.cfg.train.eval_batch_size)
    for batch in data_lib.loader.eval_loader(data.images, data.masks, data.val_idx, data.stats,
                                             batch_size):
        out = jax.device_get(run.eval_fn(variables, run.placement.shard(batch), run.pos_weight,
                                         run.threshold))
        counts += np.asarray(out["counts"], np.float64)
        loss_sum += float(out["loss_sum"])
        tiles += float(out["tiles"])
    return {**metrics.summarize(counts), "loss": loss_sum / max(tiles, 1.0)}


def better_weights(record: dict, kinds: list[str]) -> str:
    """The kind of weights ("raw", "ema") with the higher held-out mIoU; EMA wins a tie, as in
    the authors' code (ema_mIoU >= raw_mIoU)."""
    return max(reversed(kinds), key=lambda kind: record[kind]["miou"])


def end_epoch(run: FoldRun, state: TrainState, record: dict, candidates: dict[str, dict],
              best: dict) -> dict:
    """Exports the better-scoring weights as best/ when they beat the best so far, logs the
    epoch and checkpoints the state; returns the best so far."""
    kind = better_weights(record, list(candidates))
    improved = record[kind]["miou"] > best["miou"]
    if improved:
        best = {"epoch": record["epoch"], "weights": kind, "held_out": record["held_out"],
                **record[kind]}
        if parallel.is_main():
            export_best(run.fold_dir, run.cfg, run.data.stats, candidates[kind], best)
    run.log.epoch(record)
    log.info(format_epoch(record, run.cfg.train.epochs, improved))
    meta = {"epoch": record["epoch"], "step_in_epoch": 0, "partial_steps": [], "best": best}
    save_checkpoint(run.manager, record["step"], state, meta)
    return best


def train_fold(cfg: config_lib.Config, fold, workdir: Path, pretrained: str | None = None,
               tensorboard: bool = False, dataset: data_lib.Dataset | None = None) -> dict:
    """Trains one fold (an index, or "official") into workdir/fold{K}/, resuming if it was
    started; `tensorboard` adds event files of the epoch records under fold{K}/tensorboard/;
    `dataset`: :func:`open_training_data`'s, else opened here.

    SIGTERM / SIGINT checkpoint the current step and raise resilience.Preempted; a non-finite
    step raises resilience.Diverged as train.on_nonfinite says; a run folder that cannot hold
    the run raises resilience.StorageError before training."""
    tcfg = cfg.train
    guard = resilience.NonfiniteGuard(tcfg.on_nonfinite, tcfg.max_nonfinite)
    # Before the run folder is written: a rerun with the profile it names must not be refused.
    dataset = open_training_data(cfg) if dataset is None else dataset
    fold_dir = open_run(cfg, fold, workdir, pretrained)
    with resilience.StopSignals() as stop:
        precision = runtime.resolve_precision(tcfg.precision)
        placement = parallel.training_placement(tcfg.batch_size)
        data = load_fold_data(cfg, dataset, fold, fold_dir)
        init_key, dropout_key = jax.random.split(jax.random.key(tcfg.seed))
        state = initial_state(cfg, precision, data.steps_per_epoch, init_key, pretrained)
        # Placed first, so that a checkpoint is restored straight into this placement (several
        # processes cannot move restored arrays between hosts afterwards).
        state = jax.device_put(state, placement.replicated)
        resilience.check_free_space(fold_dir, resilience.tree_bytes(state),
                                    resilience.tree_bytes((state.params, state.batch_stats)),
                                    tcfg.keep_checkpoints)
        manager = checkpoint_manager(fold_dir / "checkpoints", tcfg.keep_checkpoints)
        state, progress = restore_or_start(manager, state, fold_dir, data.steps_per_epoch)
        start_epoch, best = progress["epoch"], progress["best"]
        run = FoldRun(
            cfg, fold_dir, data, placement,
            train_fn=make_train_step(tcfg, data.steps_per_epoch, placement),
            eval_fn=make_eval_step(state.apply_fn, tcfg.loss, placement, tcfg.dice),
            dropout_key=dropout_key, pos_weight=jnp.float32(data.stats.pos_weight),
            threshold=jnp.float32(tcfg.select_threshold),
            log=RunLog(fold_dir, start_epoch, int(state.step), tensorboard), manager=manager,
            stop=stop, guard=guard,
        )
        log.info(describe_run(run, fold, precision))
        bar = console.progress(total=tcfg.epochs * data.steps_per_epoch,
                               initial=int(jax.device_get(state.step)), desc=fold_dirname(fold),
                               unit="step")
        try:
            for epoch in range(start_epoch, tcfg.epochs):
                done = progress["partial_steps"] if epoch == start_epoch else []
                state, seen, timing = train_epoch(run, state, epoch, bar, done)
                if len(seen) < data.steps_per_epoch:
                    stop_here(run, state, epoch, seen, best)
                candidates = candidate_weights(state, tcfg.ema)
                scores = {kind: score(run, variables) for kind, variables in candidates.items()}
                record = {"epoch": epoch + 1, "step": int(jax.device_get(state.step)),
                          **summarize_steps(seen), **timing,
                          "held_out": data.split["held_out"], **scores}
                best = end_epoch(run, state, record, candidates, best)
            finish_checkpoints(manager)
        except resilience.Diverged:
            finish_checkpoints(manager)  # the last good checkpoint is complete on disk
            raise
        finally:
            bar.close()
            run.log.close()
    manager.close()
    summary = {"fold": fold, "dir": str(fold_dir), "best": best, "epochs": tcfg.epochs,
               "split": data.split}
    if parallel.is_main():
        (fold_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def describe_run(run: FoldRun, fold, precision: str) -> str:
    tcfg, data = run.cfg.train, run.data
    dropped = data.split["dropped_tiles"]
    buffer = f" ({dropped} dropped as the buffer around them)" if dropped else ""
    return (f"fold {fold}: {len(data.train_idx)} training / {len(data.val_idx)} held-out tiles "
            f"({data.split['held_out']}){buffer}, "
            f"{data.steps_per_epoch} steps/epoch x {tcfg.epochs} epochs, global batch "
            f"{tcfg.batch_size} on {jax.device_count()} {jax.devices()[0].platform} device(s) in "
            f"{jax.process_count()} process(es), {precision}, w+={data.stats.pos_weight:.3f}")


def format_epoch(record: dict, epochs: int, improved: bool) -> str:
    parts = [f"epoch {record['epoch']:>3}/{epochs}", f"loss {record['loss']:.4f}"]
    for kind in ("raw", "ema"):
        if kind in record:
            s = record[kind]
            parts.append(f"{kind} mIoU {s['miou']:.4f} F1 {s['f1']:.4f}")
    parts.append(f"held-out ({record['held_out']})")
    parts.append(f"lr {record['lr']:.2e}")
    parts.append(f"scale {record['loss_scale']:.0f}")
    if record["skipped_steps"]:
        nonfinite = record["nonfinite_steps"]
        parts.append(f"{record['skipped_steps']} steps skipped ({nonfinite} non-finite, "
                     f"{record['skipped_steps'] - nonfinite} fp16 overflow)")
    if improved:
        parts.append("* best")
    return " | ".join(parts)


# ----------------------------------------------------------------------------- command line


def parse_fold(text: str, num_folds: int):
    if text in ("all", "official"):
        return text
    try:
        fold = int(text)
    except ValueError:
        fold = -1
    if not 0 <= fold < num_folds:
        raise ConfigError(f"--fold {text}: choose 0..{num_folds - 1}, 'all' or 'official'")
    return fold


def build_parser() -> argparse.ArgumentParser:
    parser = cli_lib.parser(
        "jaxswin.train", "Train DualSwinFusionSeg on one cross-validation fold (or all of them).",
        epilog="\n".join([cli_lib.presets(), cli_lib.losses(), cli_lib.band_profiles()]),
    )
    parser.add_argument("--fold", required=True,
                        help="fold index 0..num_folds-1, 'all' (every fold in turn) or 'official' "
                             "(the dataset's own train/validation split)")
    parser.add_argument("--data", help="dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--bands", help="band profile of the files (see below) or a "
                                        "comma-separated list of channel names")
    parser.add_argument("--band-check", choices=data_lib.inspect.MODES,
                        help="a band profile the pixels contradict: stop (error, the default), "
                             "warn and go on, or skip the check (off)")
    parser.add_argument("--workdir", help="run folder (default: runs/<preset>)")
    config_lib.add_arguments(parser)
    parser.add_argument("--pretrained", help="converted SwinV2 weights (jaxswin-convert timm)")
    parser.add_argument("--precision", choices=["auto", *runtime.PRECISIONS],
                        help="compute precision (default: the preset's, auto = bf16 on recent "
                             "GPUs, fp16 on older ones, fp32 on CPU)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files of the epoch records "
                             "(fold<k>/tensorboard/, beside metrics.jsonl)")
    group = parser.add_argument_group("multi-host")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run detected from the cluster environment")
    group.add_argument("--coordinator-address", help="host:port of process 0")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    group.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                       help="a process silent this long counts as lost: the others stop, naming "
                            "it (JAX's heartbeat_timeout_seconds; default 100)")
    return parser


def load_config(args) -> config_lib.Config:
    cfg = config_lib.from_args(args)
    if cfg.data.root and not Path(cfg.data.root).is_dir():
        raise UserError(f"--data {cfg.data.root}: no such directory")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UserError(f"--pretrained {args.pretrained}: no such file")
    return cfg


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    cpu_flags = runtime.use_cpu_flags()  # before anything starts JAX's backends
    parallel.init_distributed(args.coordinator_address, args.num_processes, args.process_id,
                              detect=args.distributed, heartbeat_timeout=args.heartbeat_timeout)
    console.setup()
    runtime.report_cpu_flags(cpu_flags)
    runtime.enable_compilation_cache()
    cfg = load_config(args)
    fold = parse_fold(args.fold, cfg.data.num_folds)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    data = Path(cfg.data.root).resolve() if cfg.data.root else None
    if data is not None and (data == workdir.resolve() or data in workdir.resolve().parents):
        raise UserError(f"--workdir {workdir}: is inside the dataset {cfg.data.root}, which is "
                        "never written to; choose a folder outside it")
    folds = list(range(cfg.data.num_folds)) if fold == "all" else [fold]
    try:
        dataset = open_training_data(cfg)
        summaries = [train_fold(cfg, f, workdir, args.pretrained, args.tensorboard, dataset)
                     for f in folds]
    except Exception as err:
        if jax.process_count() > 1:  # a lost process: say which and exit, never hang
            resilience.exit_if_peer_lost(err, args.heartbeat_timeout)
        raise
    if parallel.is_main():
        command = predict_command(cfg, folds, workdir)
        print(format_summary(summaries, workdir, command))  # the run's result, on stdout
    return 0


def predict_command(cfg: config_lib.Config, folds: list, workdir: Path) -> str:
    """The jaxswin.predict command for this run's models, runnable as printed: on the data's
    test (unlabelled) images if it has them, else its validation images."""
    checkpoint = workdir if len(folds) > 1 else workdir / fold_dirname(folds[0])
    root = Path(cfg.data.root) if cfg.data.root else data_lib.synthetic.ensure(cache_dir())
    found = [root / s / "images" for s in ("test", "val") if (root / s / "images").is_dir()]
    tiles = found[0] if found else root / "images" if (root / "images").is_dir() else "TILES"
    words = ["python", "-m", "jaxswin.predict", "--checkpoint", str(checkpoint),
             "--input", str(tiles), "--output", str(workdir / "predictions")]
    return shlex.join(words)


def format_summary(summaries: list[dict], workdir: Path, command: str) -> str:
    lines = [f"\nfinished: {workdir}"]
    for s in summaries:
        b = s["best"]
        lines.append(f"  {fold_dirname(s['fold'])}: best epoch {b['epoch']} ({b['weights']} weights) "
                     f"held-out ({s['split']['held_out']}) mIoU {b['miou']:.4f} F1 {b['f1']:.4f} "
                     f"-> {s['dir']}/best")
    if len(summaries) > 1:
        mious = np.array([s["best"]["miou"] for s in summaries])
        f1s = np.array([s["best"]["f1"] for s in summaries])
        kinds = " + ".join(dict.fromkeys(s["split"]["held_out"] for s in summaries))
        lines.append(f"  mean over folds ({kinds}): mIoU {mious.mean():.4f} ± {mious.std():.4f}, "
                     f"F1 {f1s.mean():.4f} ± {f1s.std():.4f}")
    lines.append(f"predict with: {command}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
