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
import json
import logging
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
from flax.training import dynamic_scale as dynamic_scale_lib
from flax.training import train_state

from jaxswin import config as config_lib
from jaxswin import console, losses, metrics, models, parallel, runtime, weights
from jaxswin import data as data_lib
from jaxswin.errors import ConfigError, UserError, cli

log = logging.getLogger("jaxswin.train")

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


def make_train_step(tcfg: config_lib.TrainConfig, steps_per_epoch: int,
                    placement: parallel.Placement | None = None):
    """`train_step` for this recipe, jitted: fn(state, batch, pos_weight, dropout_key) ->
    (state, metrics), the batch split over the mesh's data axis, the rest replicated, the input
    state's buffers donated. Batches may be global arrays or (one process) numpy arrays."""
    placement = placement or parallel.Placement.all_devices()
    step = functools.partial(
        train_step, loss_name=tcfg.loss, ema_decay=tcfg.ema_decay if tcfg.ema else None,
        schedule=make_schedule(tcfg, steps_per_epoch),
    )
    replicated = placement.replicated
    return jax.jit(step, in_shardings=(replicated, placement.data, replicated, replicated),
                   out_shardings=replicated, donate_argnums=0)


def make_eval_step(apply_fn, loss_name: str, placement: parallel.Placement | None = None):
    """`eval_step` jitted: fn(variables, batch, pos_weight, threshold) -> counts and loss sums,
    sharded as :func:`make_train_step`."""
    placement = placement or parallel.Placement.all_devices()
    replicated = placement.replicated
    return jax.jit(functools.partial(eval_step, apply_fn, loss_name=loss_name),
                   in_shardings=(replicated, placement.data, replicated, replicated),
                   out_shardings=replicated)


# ----------------------------------------------------------------------------- run folder


def fold_dirname(fold) -> str:
    return "official" if fold == "official" else f"fold{fold}"


def open_run(cfg: config_lib.Config, fold, workdir: Path) -> Path:
    """The fold's run folder, refusing one that holds a run of another configuration."""
    fold_dir = workdir / fold_dirname(fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    config_text = config_lib.to_toml(cfg)
    saved_config = fold_dir / "config.toml"
    if saved_config.exists() and saved_config.read_text() != config_text:
        raise ConfigError(
            f"{fold_dir} holds a run with a different configuration ({saved_config}); "
            "rerun with the same options to resume it, or choose another --workdir"
        )
    parallel.sync("jaxswin.train: run config checked")  # every process read it before 0 writes
    if parallel.is_main():
        saved_config.write_text(config_text)
    return fold_dir


def checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState):
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
            log.warning("checkpoint %s in %s is unreadable (%s: %s); falling back to an earlier "
                        "one", step, manager.directory, type(err).__name__, str(err)[:200])
    return None, None


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, epoch: int, best: dict):
    manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"epoch": epoch, "best": best}),
        ),
    )


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


class RunLog:
    """The fold's logs: steps.jsonl, metrics.jsonl and curves.png, written by process 0 only.

    Opening it drops the records after the last completed epoch (a resumed run redoes the rest).
    """

    def __init__(self, fold_dir: Path, completed_epochs: int):
        self.fold_dir, self.main = fold_dir, parallel.is_main()
        self.history: list[dict] = []
        if self.main:
            self.history = truncate_log(fold_dir / "metrics.jsonl", completed_epochs)
            truncate_log(fold_dir / "steps.jsonl", completed_epochs)

    def step(self, epoch: int, step_metrics: dict) -> dict:
        """Fetches one step's metrics from the device, logs and returns them."""
        values = {k: v.item() for k, v in jax.device_get(step_metrics).items()}
        values["finite"] = bool(values["finite"])
        self._append("steps.jsonl", {"epoch": epoch + 1, **values})
        return values

    def epoch(self, record: dict) -> None:
        self.history.append(record)
        self._append("metrics.jsonl", record)
        if self.main:
            write_curves(self.fold_dir / "curves.png", self.history)

    def _append(self, name: str, record: dict) -> None:
        if self.main:
            with open(self.fold_dir / name, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def truncate_log(path: Path, completed_epochs: int) -> list[dict]:
    """Keeps the records of a .jsonl log up to `completed_epochs` and returns them."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["epoch"] <= completed_epochs]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


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


def load_fold_data(cfg: config_lib.Config, fold, fold_dir: Path) -> FoldData:
    """Reads the dataset, splits off the fold and fits the statistics on its training tiles."""
    dataset = data_lib.open_dataset(cfg.data.root or None, cfg.data.bands, cfg.model.img_size)
    images, masks = dataset.load()
    train_idx, val_idx = data_lib.folds.split_for(dataset, fold, cfg.data)
    pool = len(dataset.indices(*data_lib.folds.CV_SPLITS))
    split = {"held_out": data_lib.folds.held_out_kind(cfg.data.folds, fold),
             "folds": cfg.data.folds, "train_tiles": len(train_idx), "held_out_tiles": len(val_idx),
             "dropped_tiles": pool - len(train_idx) - len(val_idx)}
    stats = data_lib.Stats.fit(images[train_idx], masks[train_idx])
    if parallel.is_main():
        stats.save(fold_dir / "stats.json")
    steps = data_lib.loader.steps_per_epoch(len(train_idx), cfg.train.batch_size)
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
    elif cfg.model.encoder != "swinv2_nano":
        log.warning("no --pretrained weights: both encoders start from RANDOM weights. The paper "
                    "fine-tunes ImageNet SwinV2 weights; convert them with convert/timm_to_flax.py "
                    "and pass --pretrained FILE.")
    return create_state(module, variables, cfg.train, steps_per_epoch, precision)


def restore_or_start(manager: ocp.CheckpointManager, state: TrainState, fold_dir: Path):
    """(state, completed epochs, best so far) from the latest checkpoint, else a fresh start."""
    restored, meta = restore_latest(manager, state)
    if restored is None:
        return state, 0, {"miou": -1.0}
    best = meta["best"]
    log.info("resuming %s after epoch %d (best so far: epoch %s, %s weights, mIoU %.4f)",
             fold_dir, meta["epoch"], best.get("epoch"), best.get("weights"), best["miou"])
    return restored, meta["epoch"], best


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


def train_epoch(run: FoldRun, state: TrainState, epoch: int, bar) -> tuple[TrainState, dict]:
    """One epoch of steps, each step's metrics logged; returns the state and the epoch's loss,
    learning rate, loss scale, skipped steps and timing."""
    tcfg, data = run.cfg.train, run.data
    epoch_start = time.perf_counter()
    seen, pending, timed_steps, timed_from = [], None, 0, None
    batches = data_lib.loader.train_loader(
        data.images, data.masks, data.train_idx, data.stats, global_batch_size=tcfg.batch_size,
        seed=tcfg.seed, epoch=epoch, augment=run.cfg.data.augment, workers=run.cfg.data.workers,
        device_warp=run.cfg.data.device_warp, augment_strength=run.cfg.data.augment_strength,
        band_dropout=run.cfg.data.band_dropout, border_smoothing=run.cfg.data.border_smoothing,
    )
    # enumerate + break (not islice) runs the loader to its end when the epoch is whole, so its
    # worker stream carries on into the next epoch.
    for step_in_epoch, batch in enumerate(batches):
        if step_in_epoch >= data.steps_per_epoch:
            break
        state, step_metrics = run.train_fn(state, run.placement.shard(batch), run.pos_weight,
                                           run.dropout_key)
        if pending is not None:  # read the previous step's metrics while this one runs
            seen.append(run.log.step(epoch, pending))
        pending = step_metrics
        if step_in_epoch == 1:  # the first step compiled; time from here
            timed_from = time.perf_counter()
        elif timed_from is not None:
            timed_steps += 1
        rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
        bar.set_postfix(epoch=epoch + 1, loss=f"{seen[-1]['loss']:.4f}" if seen else "...",
                        tiles_s=f"{rate or 0.0:.1f}", refresh=False)
        bar.update(1)
    seen.append(run.log.step(epoch, pending))
    rate = tiles_per_second(timed_steps * tcfg.batch_size, timed_from)
    return state, {
        "loss": float(np.mean([s["loss"] for s in seen])),
        "lr": seen[-1]["lr"],
        "loss_scale": seen[-1]["loss_scale"],
        "skipped_steps": sum(not s["finite"] for s in seen),
        "train_seconds": round(time.perf_counter() - epoch_start, 2),
        "tiles_per_s": round(rate, 2) if rate else None,
    }


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


def end_epoch(run: FoldRun, manager: ocp.CheckpointManager, state: TrainState, record: dict,
              candidates: dict[str, dict], best: dict) -> dict:
    """Exports the better-scoring weights as best/ when they beat the best so far, logs the
    epoch and checkpoints the state; returns the best so far."""
    kind = max(candidates, key=lambda k: record[k]["miou"])
    improved = record[kind]["miou"] > best["miou"]
    if improved:
        best = {"epoch": record["epoch"], "weights": kind, "held_out": record["held_out"],
                **record[kind]}
        if parallel.is_main():
            export_best(run.fold_dir, run.cfg, run.data.stats, candidates[kind], best)
    run.log.epoch(record)
    log.info(format_epoch(record, run.cfg.train.epochs, improved))
    save_checkpoint(manager, state, record["epoch"], best)
    return best


def train_fold(cfg: config_lib.Config, fold, workdir: Path, pretrained: str | None = None) -> dict:
    """Trains one fold (an index, or "official") into workdir/fold{K}/, resuming if it was started."""
    tcfg = cfg.train
    fold_dir = open_run(cfg, fold, workdir)
    precision = runtime.resolve_precision(tcfg.precision)
    placement = parallel.training_placement(tcfg.batch_size)
    data = load_fold_data(cfg, fold, fold_dir)
    init_key, dropout_key = jax.random.split(jax.random.key(tcfg.seed))
    state = initial_state(cfg, precision, data.steps_per_epoch, init_key, pretrained)
    manager = checkpoint_manager(fold_dir / "checkpoints", tcfg.keep_checkpoints)
    state, start_epoch, best = restore_or_start(manager, state, fold_dir)
    run = FoldRun(
        cfg, fold_dir, data, placement,
        train_fn=make_train_step(tcfg, data.steps_per_epoch, placement),
        eval_fn=make_eval_step(state.apply_fn, tcfg.loss, placement),
        dropout_key=dropout_key, pos_weight=jnp.float32(data.stats.pos_weight),
        threshold=jnp.float32(cfg.predict.threshold), log=RunLog(fold_dir, start_epoch),
    )
    state = jax.device_put(state, placement.replicated)
    log.info(describe_run(run, fold, precision))
    bar = console.progress(total=tcfg.epochs * data.steps_per_epoch,
                           initial=start_epoch * data.steps_per_epoch, desc=fold_dirname(fold),
                           unit="step")
    for epoch in range(start_epoch, tcfg.epochs):
        state, trained = train_epoch(run, state, epoch, bar)
        candidates = candidate_weights(state, tcfg.ema)
        scores = {kind: score(run, variables) for kind, variables in candidates.items()}
        record = {"epoch": epoch + 1, "step": int(jax.device_get(state.step)), **trained,
                  "held_out": data.split["held_out"], **scores}
        best = end_epoch(run, manager, state, record, candidates, best)
    bar.close()
    manager.wait_until_finished()
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
    parallel.init_distributed(args.coordinator_address, args.num_processes, args.process_id,
                              detect=args.distributed)
    console.setup()
    runtime.enable_compilation_cache()
    cfg = load_config(args)
    fold = parse_fold(args.fold, cfg.data.num_folds)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    folds = list(range(cfg.data.num_folds)) if fold == "all" else [fold]
    summaries = [train_fold(cfg, f, workdir, args.pretrained) for f in folds]
    if parallel.is_main():
        print(format_summary(summaries, workdir))  # the run's result, on stdout
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
