"""Training: ``python -m jaxswin.train --fold K``.

Reads like the flax examples: a :class:`TrainState`, a pure :func:`train_step` and
:func:`eval_step`, and a loop (:func:`train_fold`) that only orchestrates: it feeds grain batches
into one jitted step sharded data-parallel over every device of every host, scores the raw and
EMA weights after each epoch, keeps the better as the fold's best, checkpoints with orbax and
resumes from the latest checkpoint when the same command is run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax.training import dynamic_scale as dynamic_scale_lib
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxswin import config as config_lib
from jaxswin import data as data_lib
from jaxswin import losses, metrics, models, runtime, weights
from jaxswin.errors import ConfigError, UserError, cli

# ----------------------------------------------------------------------------- state and steps


class TrainState(train_state.TrainState):
    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    # Dynamic loss scaling, fp16 only (None otherwise).
    dynamic_scale: dynamic_scale_lib.DynamicScale | None = None


def make_schedule(tcfg: config_lib.TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 to `lr` over `warmup_epochs`, then cosine to 0 at the last step."""
    total = max(1, tcfg.epochs * steps_per_epoch)
    warmup = min(total - 1, round(tcfg.warmup_epochs * steps_per_epoch))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tcfg.lr, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


def create_state(
    module, variables, tcfg: config_lib.TrainConfig, steps_per_epoch: int, precision: str
) -> TrainState:
    tx = optax.adamw(make_schedule(tcfg, steps_per_epoch), weight_decay=tcfg.weight_decay)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=module.apply,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        dynamic_scale=dynamic_scale_lib.DynamicScale() if precision == "fp16" else None,
    )


def train_step(state: TrainState, batch: dict, pos_weight, base_key, *, loss_name: str,
               ema_decay: float | None, schedule: optax.Schedule):
    """One optimisation step; pure. Returns the new state and scalar metrics."""
    loss_fn = losses.get(loss_name)
    key = jax.random.fold_in(base_key, state.step)
    if "warp" in batch:  # the loader left the geometric augmentation to the device
        batch = data_lib.augment.warp(batch)

    def objective(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["rgb"], batch["aux"], train=True, rngs={"dropout": key}, mutable=["batch_stats"],
        )
        return loss_fn(logits.astype(jnp.float32), batch["mask"], pos_weight), updates["batch_stats"]

    if state.dynamic_scale is not None:
        grad_fn = state.dynamic_scale.value_and_grad(objective, has_aux=True)
        dynamic_scale, finite, (loss, batch_stats), grads = grad_fn(state.params)
    else:
        (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        dynamic_scale, finite = None, jnp.array(True)

    stepped = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay is not None:  # ema = decay * ema + (1 - decay) * new weights (BN statistics too)
        ema = functools.partial(optax.incremental_update, step_size=1.0 - ema_decay)
        stepped = stepped.replace(
            ema_params=ema(stepped.params, state.ema_params),
            ema_batch_stats=ema(stepped.batch_stats, state.ema_batch_stats),
        )
    if dynamic_scale is not None:
        # A step whose gradients overflowed changes nothing but the scale (and the step count).
        keep_new = functools.partial(jnp.where, finite)
        stepped = stepped.replace(
            params=jax.tree.map(keep_new, stepped.params, state.params),
            opt_state=jax.tree.map(keep_new, stepped.opt_state, state.opt_state),
            batch_stats=jax.tree.map(keep_new, stepped.batch_stats, state.batch_stats),
            ema_params=jax.tree.map(keep_new, stepped.ema_params, state.ema_params),
            ema_batch_stats=jax.tree.map(keep_new, stepped.ema_batch_stats, state.ema_batch_stats),
            dynamic_scale=dynamic_scale,
        )
    scale = dynamic_scale.scale if dynamic_scale is not None else jnp.array(1.0)
    return stepped, {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr": schedule(state.step),
        "loss_scale": scale,
        "finite": finite,
    }


def eval_step(apply_fn, variables: dict, batch: dict, pos_weight, threshold, *, loss_name: str):
    """Confusion counts and the weighted loss sum of one (padded) batch; pure."""
    logits = apply_fn(variables, batch["rgb"], batch["aux"], train=False).astype(jnp.float32)
    weight = batch["weight"]
    per_tile = jax.vmap(
        lambda lg, m: losses.get(loss_name)(lg[None], m[None], pos_weight)
    )(logits, batch["mask"])
    pred = jax.nn.sigmoid(logits) > threshold
    return {
        "counts": metrics.confusion(pred, batch["mask"] > 0.5, weight),
        "loss_sum": jnp.sum(per_tile * weight),
        "tiles": jnp.sum(weight),
    }


# ----------------------------------------------------------------------------- devices


@dataclasses.dataclass(frozen=True)
class Placement:
    """The device mesh: batches split on the 'data' axis, everything else replicated."""

    mesh: Mesh

    @property
    def data(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def local_batch(self, batch: dict) -> dict:
        """This process's rows -> global arrays sharded over every device of every process."""
        return {k: jax.make_array_from_process_local_data(self.data, v) for k, v in batch.items()}


def make_placement(global_batch_size: int, option: str = "train.batch_size") -> Placement:
    devices = jax.device_count()
    if global_batch_size % devices:
        raise ConfigError(
            f"{option}={global_batch_size} does not split evenly over {devices} devices "
            f"({jax.process_count()} processes); use a multiple of {devices}"
        )
    return Placement(Mesh(np.array(jax.devices()), ("data",)))


def init_distributed(args) -> None:
    """Joins a multi-host run when asked by flags or the environment (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID), or on SLURM / Open MPI where JAX detects the cluster."""
    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = args.num_processes or os.environ.get("JAX_NUM_PROCESSES")
    index = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if not (args.distributed or address or count):
        return
    if (address or count or index is not None) and not (address and count and index is not None):
        raise ConfigError(
            "a multi-process run needs --coordinator-address, --num-processes and --process-id "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID) together"
        )
    if address:
        jax.distributed.initialize(address, int(count), int(index))
    else:
        jax.distributed.initialize()  # cluster auto-detection (SLURM, Open MPI, TPU pods)
    # Meet once now, while every process is at the same point: CPU collectives (gloo) set up
    # their communicator at the first collective and give up if a process is 30 s late, which
    # a process still compiling its model on a busy host can be.
    multihost_utils.sync_global_devices("jaxswin.train: processes joined")


# ----------------------------------------------------------------------------- run folder


def fold_dirname(fold) -> str:
    return "official" if fold == "official" else f"fold{fold}"


def checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState, log):
    """The newest readable checkpoint as (state, meta); a damaged one falls back to the one before."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
            return restored.state, restored.meta
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
            log(f"warning: checkpoint {step} in {manager.directory} is unreadable "
                f"({type(err).__name__}: {str(err)[:200]}); falling back to an earlier one")
    return None, None


def export_best(fold_dir: Path, cfg: config_lib.Config, stats, variables: dict, scores: dict):
    """Writes best/ (weights, config, normalisation statistics, scores) for jaxswin.predict;
    the previous best/ is replaced only once the new one is complete."""
    staging, best, old = fold_dir / "best.tmp", fold_dir / "best", fold_dir / "best.old"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weights.save(
        staging / "model.safetensors",
        jax.device_get(variables),
        {"format": "jaxswin-model", "config": config_lib.to_toml(cfg)},
    )
    (staging / "config.toml").write_text(config_lib.to_toml(cfg))
    stats.save(staging / "stats.json")
    (staging / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
    if best.exists():
        shutil.rmtree(old, ignore_errors=True)
        best.rename(old)
    staging.rename(best)
    shutil.rmtree(old, ignore_errors=True)


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


class Log:
    """Prints and appends to files on process 0 only."""

    def __init__(self, fold_dir: Path):
        self.main = jax.process_index() == 0
        self.fold_dir = fold_dir

    def __call__(self, text: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def append(self, name: str, record: dict) -> None:
        if self.main:
            with open(self.fold_dir / name, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def truncate_log(path: Path, completed_epochs: int) -> list[dict]:
    """Keeps the records of a .jsonl log up to the last completed epoch (a resumed run redoes the
    rest) and returns them. Process 0 only: it alone writes the logs."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["epoch"] <= completed_epochs]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def evaluate(placement, eval_fn, variables, batches, pos_weight, threshold) -> dict:
    counts = np.zeros(4, np.float64)
    loss_sum = tiles = 0.0
    for batch in batches:
        out = jax.device_get(eval_fn(variables, placement.local_batch(batch), pos_weight, threshold))
        counts += np.asarray(out["counts"], np.float64)
        loss_sum += float(out["loss_sum"])
        tiles += float(out["tiles"])
    return {**metrics.summarize(counts), "loss": loss_sum / max(tiles, 1.0)}


def train_fold(cfg: config_lib.Config, fold, workdir: Path, pretrained: str | None = None) -> dict:
    """Trains one fold (an index, or "official") into workdir/fold{K}/, resuming if it was started."""
    tcfg = cfg.train
    fold_dir = workdir / fold_dirname(fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    log = Log(fold_dir)
    config_text = config_lib.to_toml(cfg)
    saved_config = fold_dir / "config.toml"
    if saved_config.exists() and saved_config.read_text() != config_text:
        raise ConfigError(
            f"{fold_dir} holds a run with a different configuration ({saved_config}); "
            "rerun with the same options to resume it, or choose another --workdir"
        )
    if jax.process_count() > 1:  # every process has read the saved config before 0 writes it
        multihost_utils.sync_global_devices("jaxswin.train: run config checked")
    if log.main:
        saved_config.write_text(config_text)

    precision = runtime.resolve_precision(tcfg.precision)
    placement = make_placement(tcfg.batch_size)
    eval_batch_size = math.ceil(tcfg.eval_batch_size / jax.device_count()) * jax.device_count()

    dataset = data_lib.open_dataset(cfg.data.root or None, cfg.data.bands, cfg.model.img_size)
    images, masks = dataset.load()
    train_idx, val_idx = data_lib.folds.split_for(dataset, fold, cfg.data)
    held_out = data_lib.folds.held_out_kind(cfg.data.folds, fold)
    dropped = len(dataset.indices(*data_lib.folds.CV_SPLITS)) - len(train_idx) - len(val_idx)
    stats = data_lib.Stats.fit(images[train_idx], masks[train_idx])
    if log.main:
        stats.save(fold_dir / "stats.json")
    steps_per_epoch = data_lib.loader.steps_per_epoch(len(train_idx), tcfg.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"fold {fold} has {len(train_idx)} training tiles, fewer than train.batch_size="
            f"{tcfg.batch_size}; lower the batch size"
        )
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)

    module = models.build(cfg.model, runtime.PRECISIONS[precision])
    key = jax.random.key(tcfg.seed)
    init_key, dropout_key = jax.random.split(key)
    variables = models.init(module, cfg.model, init_key)
    if pretrained:
        variables = models.load_pretrained(variables, cfg.model, pretrained)
    elif cfg.model.encoder != "swinv2_nano":
        log("WARNING: no --pretrained weights: both encoders start from RANDOM weights. The paper "
            "fine-tunes ImageNet SwinV2 weights; convert them with convert/timm_to_flax.py and pass "
            "--pretrained FILE.")
    schedule = make_schedule(tcfg, steps_per_epoch)
    state = create_state(module, variables, tcfg, steps_per_epoch, precision)
    del variables

    manager = checkpoint_manager(fold_dir / "checkpoints", tcfg.keep_checkpoints)
    restored, meta = restore_latest(manager, state, log)
    start_epoch, best = 0, {"miou": -1.0}
    if restored is not None:
        state, start_epoch, best = restored, meta["epoch"], meta["best"]
        log(f"resuming {fold_dir} after epoch {start_epoch} (best so far: epoch "
            f"{best.get('epoch')}, {best.get('weights')} weights, mIoU {best['miou']:.4f})")
    history = []
    if log.main:
        history = truncate_log(fold_dir / "metrics.jsonl", start_epoch)
        truncate_log(fold_dir / "steps.jsonl", start_epoch)
    state = jax.device_put(state, placement.replicated)

    step_fn = jax.jit(
        functools.partial(train_step, loss_name=tcfg.loss,
                          ema_decay=tcfg.ema_decay if tcfg.ema else None, schedule=schedule),
        donate_argnums=0,
    )
    eval_fn = jax.jit(functools.partial(eval_step, module.apply, loss_name=tcfg.loss))
    pos_weight = jnp.float32(stats.pos_weight)
    threshold = jnp.float32(cfg.predict.threshold)

    buffer_note = f" ({dropped} dropped as the buffer around them)" if dropped > 0 else ""
    log(f"fold {fold}: {len(train_idx)} training / {len(val_idx)} held-out tiles "
        f"({held_out}){buffer_note}, "
        f"{steps_per_epoch} steps/epoch x {tcfg.epochs} epochs, global batch {tcfg.batch_size} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) in {jax.process_count()} "
        f"process(es), {precision}, w+={stats.pos_weight:.3f}")
    from tqdm import tqdm

    bar = tqdm(total=tcfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               disable=not log.main, desc=f"{fold_dirname(fold)}", unit="step", dynamic_ncols=True,
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 60.0)
    for epoch in range(start_epoch, tcfg.epochs):
        epoch_start = time.perf_counter()
        losses_seen, pending, timed_steps, timed_from = [], None, 0, None
        batches = data_lib.loader.train_loader(
            images, masks, train_idx, stats, global_batch_size=tcfg.batch_size, seed=tcfg.seed,
            epoch=epoch, augment=cfg.data.augment, workers=cfg.data.workers,
            device_warp=cfg.data.device_warp, augment_strength=cfg.data.augment_strength,
            band_dropout=cfg.data.band_dropout, border_smoothing=cfg.data.border_smoothing,
        )
        for step_in_epoch, batch in enumerate(batches):
            if step_in_epoch >= steps_per_epoch:
                break
            state, step_metrics = step_fn(state, placement.local_batch(batch), pos_weight,
                                          dropout_key)
            # Read the previous step's metrics while this one runs, keeping the device busy.
            if pending is not None:
                losses_seen.append(record_step(log, pending, epoch))
            pending = step_metrics
            if step_in_epoch == 1:  # the first step compiled; time from here
                timed_from = time.perf_counter()
            elif timed_from is not None:
                timed_steps += 1
            rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses_seen[-1]['loss']:.4f}"
                            if losses_seen else "...", tiles_s=f"{rate or 0.0:.1f}", refresh=False)
            bar.update(1)
        losses_seen.append(record_step(log, pending, epoch))
        train_rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
        train_seconds = time.perf_counter() - epoch_start

        scores = {}
        kinds = {"raw": (state.params, state.batch_stats)}
        if tcfg.ema:
            kinds["ema"] = (state.ema_params, state.ema_batch_stats)
        for kind, (params, batch_stats) in kinds.items():
            scores[kind] = evaluate(
                placement, eval_fn, {"params": params, "batch_stats": batch_stats},
                data_lib.loader.eval_loader(images, masks, val_idx, stats, eval_batch_size),
                pos_weight, threshold,
            )
        kind = max(scores, key=lambda k: scores[k]["miou"])
        record = {
            "epoch": epoch + 1,
            "step": int(jax.device_get(state.step)),
            "loss": float(np.mean([s["loss"] for s in losses_seen])),
            "lr": losses_seen[-1]["lr"],
            "loss_scale": losses_seen[-1]["loss_scale"],
            "skipped_steps": sum(not s["finite"] for s in losses_seen),
            "train_seconds": round(train_seconds, 2),
            "tiles_per_s": round(train_rate, 2) if train_rate else None,
            "held_out": held_out,
            **scores,
        }
        improved = scores[kind]["miou"] > best["miou"]
        if improved:
            params, batch_stats = kinds[kind]
            best = {"epoch": epoch + 1, "weights": kind, "held_out": held_out, **scores[kind]}
            if log.main:
                export_best(fold_dir, cfg, stats, {"params": params, "batch_stats": batch_stats},
                            best)
        history.append(record)
        log.append("metrics.jsonl", record)
        log(format_epoch(record, tcfg.epochs, improved))
        if log.main:
            write_curves(fold_dir / "curves.png", history)
        manager.save(
            epoch + 1,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave({"epoch": epoch + 1, "best": best}),
            ),
        )
    bar.close()
    manager.wait_until_finished()
    manager.close()
    summary = {"fold": fold, "dir": str(fold_dir), "best": best, "epochs": tcfg.epochs,
               "split": {"held_out": held_out, "folds": cfg.data.folds, "train_tiles": len(train_idx),
                         "held_out_tiles": len(val_idx), "dropped_tiles": dropped}}
    if log.main:
        (fold_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def tiles_per_second(tiles: int, since: float | None) -> float | None:
    """Training rate from `since` (after the compiling first step) to now; None before it."""
    return tiles / (time.perf_counter() - since) if tiles else None


def record_step(log: Log, step_metrics: dict, epoch: int) -> dict:
    values = {k: v.item() for k, v in jax.device_get(step_metrics).items()}
    values["finite"] = bool(values["finite"])
    log.append("steps.jsonl", {"epoch": epoch + 1, **values})
    return values


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
        parts.append(f"{record['skipped_steps']} steps skipped (overflow)")
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
    parser = argparse.ArgumentParser(
        prog="python -m jaxswin.train",
        description="Train DualSwinFusionSeg on one cross-validation fold (or all of them).",
    )
    parser.add_argument("--fold", required=True,
                        help="fold index 0..num_folds-1, 'all' (every fold in turn) or 'official' "
                             "(the dataset's own train/validation split)")
    parser.add_argument("--data", help="dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--bands", help="band profile of the files (pbvs2026, mmlsv2, mmlsv1) or a "
                                        "comma-separated list of channel names")
    parser.add_argument("--workdir", help="run folder (default: runs/<preset>)")
    parser.add_argument("--preset", default="paper",
                        help="config preset under experiments/configs/ or a .toml path "
                             "(default: paper; 'tiny' for CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=10 (repeatable)")
    parser.add_argument("--pretrained", help="converted SwinV2 weights (convert/timm_to_flax.py)")
    parser.add_argument("--precision", choices=["auto", *runtime.PRECISIONS],
                        help="compute precision (default: the preset's, auto = bf16 on recent "
                             "GPUs, fp16 on older ones, fp32 on CPU)")
    group = parser.add_argument_group("multi-host")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run detected from the cluster environment")
    group.add_argument("--coordinator-address", help="host:port of process 0")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    return parser


def load_config(args) -> config_lib.Config:
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.root={json.dumps(args.data)}")
    if args.bands is not None:
        overrides.insert(0, f"data.bands={json.dumps(args.bands)}")
    if args.precision is not None:
        overrides.insert(0, f"train.precision={json.dumps(args.precision)}")
    cfg = config_lib.load(args.preset, overrides)
    if cfg.data.root and not Path(cfg.data.root).is_dir():
        raise UserError(f"--data {cfg.data.root}: no such directory")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UserError(f"--pretrained {args.pretrained}: no such file")
    return cfg


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    init_distributed(args)
    runtime.enable_compilation_cache()
    cfg = load_config(args)
    fold = parse_fold(args.fold, cfg.data.num_folds)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    folds = list(range(cfg.data.num_folds)) if fold == "all" else [fold]
    summaries = [train_fold(cfg, f, workdir, args.pretrained) for f in folds]
    if jax.process_index() == 0:
        print(format_summary(summaries, workdir))
    return 0


def format_summary(summaries: list[dict], workdir: Path) -> str:
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
    lines.append(f"predict with: python -m jaxswin.predict --checkpoint {workdir} "
                 "--input TILES --output MASKS")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
