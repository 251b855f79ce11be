"""Training and inference speed of the paper's model: jaxswin against its PyTorch twin.

    python -m experiments.bench [--batch 16] [--steps 20] [--warmup 3] [--precisions fp32,bf16,fp16]
        [--torch-modes eager,amp,compile] [--only jax|torch] [--json OUT] [--peak-tflops X]
        [--profile STEPS]
    python -m experiments.bench --plan [--batch 16] [--devices 1,8] [--precisions bf16,fp16]

On the device at hand (the first GPU, else the CPU), for the model of --preset (default: the
paper's, 128x128 tiles, random weights and inputs) it measures:

- jax fp32 / bf16 / fp16: jaxswin.train's jitted train step (forward, backward, BCE(w+) + Dice,
  AdamW, EMA; fp16 with dynamic loss scaling) and the jitted inference forward (probabilities).
- torch eager fp32, eager AMP (autocast fp16 + GradScaler on CUDA, the paper's recipe; on the CPU,
  which has no fp16 autocast, bf16 autocast) and torch.compile (of the model; with AMP on CUDA,
  fp32 on the CPU): the same step on experiments/torch_twin.py's model (AdamW, EMA of the weights
  and BatchNorm buffers, BCE(w+) + Dice) and its inference forward.

Per configuration: train-step and inference tiles/s (median step of --steps after --warmup),
the first step's wall time (compilation or warm-up included), peak memory (GPU: the framework's
allocator peak, jax memory_stats / torch max_memory_allocated; CPU: the worker process's peak
RSS, which includes the framework itself), and for jax the model FLOPs per tile that XLA counts
in the compiled train step and inference function. MFU = FLOPs per tile x tiles/s / the device's
dense bf16/fp16 tensor peak (KNOWN_PEAKS, or --peak-tflops; n/a on a CPU unless given); the torch
rows use jax's FLOP count of the same model. Each configuration runs in its own process, so JAX's
and torch's GPU memory pools never share the card and each peak is that configuration's own.

--profile STEPS adds, per configuration, where the time of a train step and of an inference
call goes, op class by op class (attention matmuls, Log-CPB, layer norms, 3x3 convolutions and
their backward, resizes, ...): XLA's profiler for jax, torch.profiler for the twin, classified
alike (experiments/op_profile.py); the report prints them side by side.

Writes one JSON (default experiments/results/bench-<device>.json; on a CPU bench-cpu-<family>.json,
intel or amd, naming the model and its AVX-512/AMX units) and prints a Markdown table
and the JAX / PyTorch ratios.

--plan measures nothing: it PLANS the GPU memory of data-parallel training from XLA's memory
analysis of the train step compiled for this machine's CPU (see plan_memory), with the train
FLOPs per tile XLA counts, for a global --batch over each of --devices GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import op_profile
from jaxswin import config as config_lib

# Dense bf16/fp16 tensor-core peaks in TFLOP/s, by a name found in the device kind; the first
# name that matches counts, so a longer name comes before its prefix (H100 PCIe before H100).
KNOWN_PEAKS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0,
    "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "T4": 65.0,
}
PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_MODES = ("eager", "amp", "compile")
RESULT_TAG = "BENCH_RESULT "
PAPER_LOSS = "bce_w_dice"  # both frameworks train on the paper's loss (see paper_loss)
GIB = 2.0**30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description="Train-step and inference speed of jaxswin and its PyTorch twin on this device.",
    )
    config_lib.add_arguments(parser)  # --preset (default: paper) and --set
    parser.add_argument("--batch", type=int, default=16, help="tiles per step (default 16)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first, compilation included (default 3)")
    parser.add_argument("--precisions",
                        help="jax compute precisions (default fp32,bf16,fp16; with --plan "
                             "bf16,fp16: what recent GPUs and the T4 train in)")
    parser.add_argument("--torch-modes", default=",".join(TORCH_MODES),
                        help="torch modes: eager (fp32), amp (autocast), compile (default: all)")
    parser.add_argument("--only", choices=["jax", "torch"], help="run one framework only")
    parser.add_argument("--json", help="output file (default experiments/results/bench-<device>.json, bench-cpu-<family>.json on a CPU)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s for MFU (default: KNOWN_PEAKS by device name)")
    parser.add_argument("--plan", action="store_true",
                        help="print the planned per-GPU memory of training (XLA's memory analysis "
                             "of the step compiled for this CPU) instead of measuring speed")
    parser.add_argument("--devices", default="1,8",
                        help="--plan: GPU counts the global --batch is split over (default 1,8)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS train steps and inference calls of each "
                             "configuration by op class (experiments/op_profile.py; not with "
                             "torch compile)")
    parser.add_argument("--xla-flags-trial", action="append", default=[], metavar="FLAGS",
                        help="instead of the comparison, time the jax worker under XLA_FLAGS=FLAGS "
                             "against XLA's defaults, alternating, --trial-rounds times each "
                             "(repeatable; write --xla-flags-trial='--xla_...'); the runs and "
                             "verdicts go into the family's JSON")
    parser.add_argument("--trial-rounds", type=int, default=3,
                        help="--xla-flags-trial: runs of each setting (default 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # framework:mode, run in a subprocess
    return parser


def random_batch(batch: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "rgb": rng.standard_normal((batch, size, size, 3), dtype=np.float32),
        "aux": rng.standard_normal((batch, size, size, 4), dtype=np.float32),
        "mask": (rng.random((batch, size, size, 1)) < 0.35).astype(np.float32),
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def timed(step, warmup: int, steps: int, sync) -> tuple[float, float]:
    """(first step's seconds, median seconds of the `steps` after `warmup`) of `step()`.

    Each step is waited for; the median keeps a busy shared machine's stalls out of the figure.
    """
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        sync(step())
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        seconds.append(time.perf_counter() - start)
    return first, statistics.median(seconds)


# ----------------------------------------------------------------------------- jax


def bench_jax(args, precision: str) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxswin import models, parallel, runtime, train

    cfg = config_lib.from_args(args)
    module = models.build(cfg.model, runtime.PRECISIONS[precision])
    variables = models.init(module, cfg.model, jax.random.key(0))
    steps_per_epoch = 100  # only shapes the LR schedule
    state = train.create_state(module, variables, cfg.train, steps_per_epoch, precision)
    placement = parallel.Placement.all_devices()
    step_fn = train.make_train_step(dataclasses.replace(cfg.train, loss=PAPER_LOSS),
                                    steps_per_epoch, placement)
    batch = jax.device_put(random_batch(args.batch, cfg.model.img_size), placement.data)
    state = jax.device_put(state, placement.replicated)
    pos_weight, key = jnp.float32(1.86), jax.random.key(1)

    start = time.perf_counter()
    compiled_step = step_fn.lower(state, batch, pos_weight, key).compile()
    train_compile = time.perf_counter() - start
    holder = {"state": state}

    def train_once():
        holder["state"], step_metrics = compiled_step(holder["state"], batch, pos_weight, key)
        return step_metrics

    first, per_step = timed(train_once, args.warmup, args.steps, jax.block_until_ready)

    def probabilities(variables, rgb, aux):
        return jax.nn.sigmoid(module.apply(variables, rgb, aux, train=False))

    final = holder["state"]
    inference_vars = {"params": final.params, "batch_stats": final.batch_stats}
    start = time.perf_counter()
    compiled_infer = jax.jit(probabilities).lower(inference_vars, batch["rgb"], batch["aux"]).compile()
    infer_compile = time.perf_counter() - start
    infer_first, per_infer = timed(
        lambda: compiled_infer(inference_vars, batch["rgb"], batch["aux"]),
        args.warmup, args.steps, jax.block_until_ready,
    )

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, source = stats["peak_bytes_in_use"], "jax memory_stats peak_bytes_in_use"
    else:
        peak, source = peak_rss_bytes(), "process peak RSS"
    result = {
        "framework": "jax", "mode": precision, "precision": precision,
        "train_tiles_s": args.batch / per_step,
        "infer_tiles_s": args.batch / per_infer,
        "train_compile_s": train_compile,
        "train_first_step_s": train_compile + first,
        "infer_first_step_s": infer_compile + infer_first,
        "train_flops_per_tile": compiled_step.cost_analysis()["flops"] / args.batch,
        "infer_flops_per_tile": compiled_infer.cost_analysis()["flops"] / args.batch,
        "peak_memory_gib": peak / GIB, "memory_source": source,
        **device_info(device.device_kind, device.platform),
        "versions": {"jax": jax.__version__},
    }
    if args.profile:  # inference first: the train steps donate the weights it reads
        root = type(module).__name__
        infer_ops = op_profile.jax_op_times(
            compiled_infer,
            lambda: jax.block_until_ready(compiled_infer(inference_vars, batch["rgb"], batch["aux"])),
            args.profile, root)
        train_ops = op_profile.jax_op_times(
            compiled_step, lambda: jax.block_until_ready(train_once()), args.profile, root)
        result["op_ms"] = {"train": train_ops, "infer": infer_ops}
    return result


# ----------------------------------------------------------------------------- torch


def paper_loss(logits, mask, pos_weight):
    """BCE(w+) + Dice, each weighted 1/2 (paper eq. 4-5), Dice over the whole batch as jaxswin's."""
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=pos_weight)
    prob, eps = logits.sigmoid(), 1e-7
    dice = 1 - (2 * (prob * mask).sum() + eps) / (prob.sum() + mask.sum() + eps)
    return (bce + dice) / 2


def bench_torch(args, mode: str) -> dict:
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from experiments import torch_twin

    cfg = config_lib.from_args(args)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # XLA's CPU backend flushes subnormal floats to zero; torch does not by default, and its fp32
    # steps then slow down many times over as AdamW's moments and the weights go subnormal.
    torch.set_flush_denormal(True)
    # AMP as the paper trained (fp16 + loss scaling) on CUDA; a CPU has bf16 autocast only.
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    use_amp = mode == "amp" or (mode == "compile" and cuda)
    precision = ("fp16" if cuda else "bf16") + " autocast" if use_amp else "fp32"

    torch.manual_seed(0)
    model = torch_twin.DualSwinFusionSeg.from_config(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                        use_buffers=True)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    forward = torch.compile(model) if mode == "compile" else model
    batch = {k: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous().to(device)
             for k, v in random_batch(args.batch, cfg.model.img_size).items()}
    pos_weight = torch.tensor(1.86, device=device)

    def sync(_):
        if cuda:
            torch.cuda.synchronize()

    def train_once():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = forward(batch["rgb"], batch["aux"])
        loss = paper_loss(logits.float(), batch["mask"], pos_weight)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        ema.update_parameters(model)
        return loss

    first, per_step = timed(train_once, args.warmup, args.steps, sync)

    model.eval()

    def infer_once():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            return torch.sigmoid(forward(batch["rgb"], batch["aux"]))

    infer_first, per_infer = timed(infer_once, args.warmup, args.steps, sync)
    if cuda:
        peak, source = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        kind = torch.cuda.get_device_name()
    else:
        peak, source, kind = peak_rss_bytes(), "process peak RSS", "cpu"
    result = {
        "framework": "torch", "mode": mode, "precision": precision,
        "train_tiles_s": args.batch / per_step,
        "infer_tiles_s": args.batch / per_infer,
        "train_first_step_s": first,
        "infer_first_step_s": infer_first,
        "peak_memory_gib": peak / GIB, "memory_source": source,
        **device_info(kind, device.type),
        "versions": {"torch": torch.__version__},
    }
    if args.profile and mode != "compile":  # hooks on a compiled model would recompile it
        model.train()
        train_ops = op_profile.torch_op_times(model, train_once, args.profile)
        model.eval()
        result["op_ms"] = {"train": train_ops,
                           "infer": op_profile.torch_op_times(model, infer_once, args.profile)}
    return result


def device_info(kind: str, platform: str) -> dict:
    from jaxswin import runtime

    cpu = runtime.cpu_info()
    return {"device": kind, "platform": platform, "cpu": cpu["model"], "cpuid": cpu["cpuid"],
            "cpu_family": cpu["family"], "cpu_features": cpu["features"],
            "cpu_count": len(os.sched_getaffinity(0)),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ----------------------------------------------------------------------------- --plan

GPUS = {"T4 16 GiB": 16.0, "H100 80 GiB": 80.0}  # the cards the plan is checked against, GiB


def precisions(args, default) -> list[str]:
    return [p.strip() for p in (args.precisions or ",".join(default)).split(",") if p.strip()]


def abstract_train_step(cfg, precision: str, global_batch: int, placement=None):
    """jaxswin.train's jitted step for `cfg` (the paper's loss) and abstract arguments for it:
    shapes and dtypes only, nothing initialised, ready to lower for any platform or to compile.
    The batch is what the loader feeds with data.device_warp: rgb, aux, mask and the warps."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxswin import models, runtime, train

    steps_per_epoch = 100  # only shapes the LR schedule
    module = models.build(cfg.model, runtime.PRECISIONS[precision])
    variables = jax.eval_shape(lambda: models.init(module, cfg.model, jax.random.key(0)))
    state = jax.eval_shape(
        lambda v: train.create_state(module, v, cfg.train, steps_per_epoch, precision), variables
    )
    step = train.make_train_step(dataclasses.replace(cfg.train, loss=PAPER_LOSS),
                                 steps_per_epoch, placement)
    side = cfg.model.img_size
    batch = {name: jax.ShapeDtypeStruct((global_batch, side, side, channels), jnp.float32)
             for name, channels in (("rgb", 3), ("aux", 4), ("mask", 1))}
    batch["warp"] = jax.ShapeDtypeStruct((global_batch, 2, 3), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return step, (state, batch, jax.ShapeDtypeStruct((), jnp.float32), key)


def tree_bytes(tree) -> int:
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def state_parts(state) -> dict[str, int]:
    """Bytes of what every device holds whatever its batch: the replicated train state."""
    return {
        "params": tree_bytes(state.params),
        "AdamW moments": tree_bytes(state.opt_state),
        "EMA": tree_bytes((state.ema_params, state.ema_batch_stats)),
        "BN statistics": tree_bytes(state.batch_stats),
    }


def step_footprint(cfg, precision: str, per_device_batch: int) -> tuple[int, float]:
    """(bytes, train FLOPs per tile) of one device's step at `per_device_batch`: XLA's memory
    analysis of the step compiled for this CPU, arguments + outputs - donated + temporaries."""
    step, inputs = abstract_train_step(cfg, precision, per_device_batch)
    compiled = step.trace(*inputs).lower().compile()
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    return total, compiled.cost_analysis()["flops"] / per_device_batch


def plan_memory(args):
    """The plan as blocks of text: a header, then one per precision (two compiles of the step
    each, minutes on a small CPU). Data parallelism replicates the state on every device and
    splits the batch, so one device's memory is a fixed part (state, code) plus a part linear in
    its batch (activations, gradients' workspace, the batch itself): XLA's analysis of the step
    compiled for per-device batches 1 and 2 gives both, and the plan extrapolates to any batch."""
    import jax

    from jaxswin import runtime

    cfg = config_lib.from_args(args)
    cpu = runtime.cpu_info()["model"]
    counts = [int(n) for n in args.devices.split(",") if n.strip()]
    uneven = [n for n in counts if n < 1 or args.batch % n]
    if uneven:
        raise SystemExit(f"error: --devices {args.devices}: --batch {args.batch} does not split "
                         f"evenly over {uneven[0]} device(s)")
    yield "\n".join([
        f"PLANNED, not measured: no GPU was used. Memory per GPU of data-parallel training of "
        f"the `{args.preset}` model ({cfg.model.img_size}x{cfg.model.img_size} tiles), from XLA's "
        f"memory analysis of jaxswin's train step compiled for this machine's CPU "
        f"({cpu}, {len(os.sched_getaffinity(0))} cores, jax {jax.__version__}).",
        "XLA's GPU compiler fuses and schedules differently, the CPU compiler keeps some bf16/fp16 "
        "work in f32, and the CUDA context, cuDNN workspaces and allocator slack (~0.5-1 GiB) are "
        "not included: treat the figures as estimates with a margin.",
    ])
    for precision in precisions(args, ("bf16", "fp16")):
        (one, flops), (two, _) = (step_footprint(cfg, precision, b) for b in (1, 2))
        per_tile, fixed = two - one, 2 * one - two
        _, (state, *_) = abstract_train_step(cfg, precision, 1)
        parts = state_parts(state)
        lines = [
            "",
            f"{precision}: train step {flops / 1e9:.1f} GFLOP per tile (XLA's count). Fixed per "
            f"GPU {fixed / GIB:.2f} GiB, of which the replicated state "
            f"{sum(parts.values()) / GIB:.2f} GiB ("
            + ", ".join(f"{name} {size / GIB:.2f}" for name, size in parts.items())
            + f"); activations and workspace {per_tile / 2**20:.0f} MiB per tile of the GPU's "
            "batch.",
            "",
            "| global batch | GPUs | batch per GPU | planned GiB per GPU | "
            + " | ".join(f"fits {gpu}" for gpu in GPUS) + " |",
            "|---|---|---|---|" + "---|" * len(GPUS),
        ]
        for count in counts:
            per_gpu = args.batch // count
            need = (fixed + per_tile * per_gpu) / GIB
            fits = " | ".join("yes" if need <= size else "no" for size in GPUS.values())
            lines.append(f"| {args.batch} | {count} | {per_gpu} | {need:.2f} | {fits} |")
        largest = ", ".join(f"{gpu}: {max(0, int((size * GIB - fixed) // per_tile))}"
                            for gpu, size in GPUS.items())
        lines.append(f"\nLargest batch per GPU that fits ({precision}): {largest}.")
        yield "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def plan(args) -> list[str]:
    jobs = []
    if args.only != "torch":
        jobs += [f"jax:{p}" for p in precisions(args, PRECISIONS)]
    if args.only != "jax":
        jobs += [f"torch:{m.strip()}" for m in args.torch_modes.split(",") if m.strip()]
    for job in jobs:
        framework, mode = job.split(":")
        allowed = PRECISIONS if framework == "jax" else TORCH_MODES
        if mode not in allowed:
            option = "--precisions" if framework == "jax" else "--torch-modes"
            raise SystemExit(f"error: {option}: unknown '{mode}' (choose from {', '.join(allowed)})")
    return jobs


def run_worker(job: str, argv: list[str], xla_flags: str | None = None) -> dict:
    """Runs one configuration in a fresh process (under XLA_FLAGS=`xla_flags` alone if given,
    else with the CPU's flags, runtime.use_cpu_flags); its result, or the error it ended with."""
    framework, mode = job.split(":")
    print(f"-- {framework} {mode} {xla_flags or ''}...", file=sys.stderr, flush=True)
    # A trial runs under exactly `xla_flags` ("": XLA's defaults), without the CPU's own flags.
    env = dict(os.environ) if xla_flags is None else {**os.environ, "XLA_FLAGS": xla_flags,
                                                      "JAXSWIN_XLA_DEFAULTS": "1"}
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", *argv, "--worker", job],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"framework": framework, "mode": mode, "error": tail[:300]}


# ----------------------------------------------------------------------------- --xla-flags-trial


def flag_trials(args, argv: list[str]) -> list[dict]:
    """Each jax job under XLA's defaults and under each --xla-flags-trial, the settings taking
    turns round by round so that a machine's drift falls on all of them alike."""
    settings = ["", *args.xla_flags_trial]
    runs = []
    for round_ in range(args.trial_rounds):
        for job in plan(args):
            for flags in settings:
                result = run_worker(job, argv, flags)
                runs.append({**result, "xla_flags": flags, "round": round_})
    return runs


def flag_verdicts(runs: list[dict]) -> list[dict]:
    """Per mode and flag setting, the tiles/s range against the defaults' range; a setting
    helps a phase only beyond the run-to-run spread: its slowest run above the defaults'
    fastest."""
    ok = [r for r in runs if "error" not in r]
    verdicts = []
    for mode in dict.fromkeys(r["mode"] for r in ok):
        default = [r for r in ok if r["mode"] == mode and not r["xla_flags"]]
        for flags in dict.fromkeys(r["xla_flags"] for r in ok if r["xla_flags"]):
            trial = [r for r in ok if r["mode"] == mode and r["xla_flags"] == flags]
            verdict = {"mode": mode, "xla_flags": flags}
            for phase in ("train", "infer"):
                ours = [r[f"{phase}_tiles_s"] for r in trial]
                base = [r[f"{phase}_tiles_s"] for r in default]
                verdict[phase] = {
                    "tiles_s": [min(ours), max(ours)], "default_tiles_s": [min(base), max(base)],
                    "median_ratio": statistics.median(ours) / statistics.median(base),
                    "beyond_spread": min(ours) > max(base),
                } if ours and base else None
            verdicts.append(verdict)
    return verdicts


def trials_markdown(runs: list[dict], verdicts: list[dict]) -> str:
    lines = ["| round | mode | XLA_FLAGS | train tiles/s | infer tiles/s |", "|---|---|---|---|---|"]
    for r in runs:
        figures = (f"failed: {r['error']} |" if "error" in r
                   else f"{r['train_tiles_s']:.2f} | {r['infer_tiles_s']:.2f} |")
        lines.append(f"| {r['round']} | {r['mode']} | {r['xla_flags'] or '(defaults)'} | {figures}")
    lines += ["", "| mode | XLA_FLAGS | phase | tiles/s range | defaults' range | median ratio "
              "| beyond the spread |", "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        for phase in ("train", "infer"):
            p = v[phase]
            if p:
                lines.append(
                    f"| {v['mode']} | {v['xla_flags']} | {phase} | {p['tiles_s'][0]:.2f}–"
                    f"{p['tiles_s'][1]:.2f} | {p['default_tiles_s'][0]:.2f}–"
                    f"{p['default_tiles_s'][1]:.2f} | {p['median_ratio']:.3f} "
                    f"| {'yes' if p['beyond_spread'] else 'no'} |")
    return "\n".join(lines) + "\n"


def peak_tflops(args, device: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    return next((peak for name, peak in KNOWN_PEAKS.items() if name in device), None)


def add_mfu(results: list[dict], peak: float | None) -> None:
    """MFU of every row from jax's FLOP count of the model (the first jax row that has one)."""
    counted = next((r for r in results if "train_flops_per_tile" in r), None)
    for r in results:
        if counted is None or peak is None or "error" in r:
            r["train_mfu"] = r["infer_mfu"] = None
            continue
        r["train_mfu"] = counted["train_flops_per_tile"] * r["train_tiles_s"] / (peak * 1e12)
        r["infer_mfu"] = counted["infer_flops_per_tile"] * r["infer_tiles_s"] / (peak * 1e12)


def ratios(results: list[dict]) -> dict:
    """The fastest jax row's tiles/s over each torch row's, for training and inference; and jax
    fp32 over torch eager (fp32, the same arithmetic) where fp32 is not the fastest."""
    ok = [r for r in results if "error" not in r]
    jax_rows = [r for r in ok if r["framework"] == "jax"]
    torch_rows = {r["mode"]: r for r in ok if r["framework"] == "torch"}
    out = {}
    if not jax_rows:
        return out
    for phase in ("train", "infer"):
        best = max(jax_rows, key=lambda r: r[f"{phase}_tiles_s"])
        for mode, r in torch_rows.items():
            out[f"{phase}: jax {best['mode']} / torch {mode}"] = \
                best[f"{phase}_tiles_s"] / r[f"{phase}_tiles_s"]
        fp32 = next((r for r in jax_rows if r["mode"] == "fp32"), None)
        if fp32 and fp32 is not best and "eager" in torch_rows:
            out[f"{phase}: jax fp32 / torch eager"] = \
                fp32[f"{phase}_tiles_s"] / torch_rows["eager"][f"{phase}_tiles_s"]
    return out


def markdown(report: dict) -> str:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [
        f"Device: {report['device']} ({report['platform']}; host {report['cpu']} "
        f"({report['cpuid']}), "
        f"{report['cpu_count']} cores, {' '.join(report['cpu_features']) or 'no AVX2'}; "
        f"XLA_FLAGS '{report['xla_flags']}'); "
        f"model `{report['preset']}` at {report['img_size']}x{report['img_size']}, batch "
        f"{report['batch']}, {report['steps']} timed steps after {report['warmup']}; peak "
        f"{num(report['peak_tflops'], '.0f')} TFLOP/s.",
        "",
        "| framework | mode | precision | train tiles/s | infer tiles/s | first train step s "
        "| peak mem GiB | train GFLOP/tile | train MFU | infer MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['framework']} | {r['mode']} | | failed: {r['error']} | | | | | | |")
            continue
        flops = r.get("train_flops_per_tile")
        lines.append(
            f"| {r['framework']} | {r['mode']} | {r['precision']} | {r['train_tiles_s']:.1f} "
            f"| {r['infer_tiles_s']:.1f} | {r['train_first_step_s']:.1f} "
            f"| {r['peak_memory_gib']:.2f} | {num(flops and flops / 1e9, '.1f')} "
            f"| {num(r['train_mfu'] and 100 * r['train_mfu'], '.1f')}{'' if r['train_mfu'] is None else ' %'} "
            f"| {num(r['infer_mfu'] and 100 * r['infer_mfu'], '.1f')}{'' if r['infer_mfu'] is None else ' %'} |"
        )
    memory = sorted({r["memory_source"] for r in report["results"] if "memory_source" in r})
    lines += ["", f"Peak memory: {'; '.join(memory)}.", "", "JAX / PyTorch (tiles/s ratio):"]
    lines += [f"- {name}: {value:.2f}x" for name, value in report["ratios"].items()]
    for phase in ("train", "infer"):
        table = op_profile.markdown(report["results"], phase)
        lines += ["", *table] if table else []
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker:
        framework, mode = args.worker.split(":")
        if framework == "jax":
            from jaxswin import runtime

            runtime.use_cpu_flags()  # the CPU's flags, as jaxswin.train and .predict set them
        result = bench_jax(args, mode) if framework == "jax" else bench_torch(args, mode)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    if min(args.batch, args.steps, args.warmup) < 1:
        raise SystemExit("error: --batch, --steps and --warmup must be at least 1")
    if args.plan:
        for block in plan_memory(args):
            print(block, flush=True)
        return 0

    # A --json file that is there is read (to keep what a later run does not replace) before
    # measuring: a file that is no bench report then costs no measurement.
    given = Path(args.json) if args.json else None
    previous = previous_report(given) if given else None
    if args.xla_flags_trial:
        args.only = "jax"
        if args.trial_rounds < 2:
            raise SystemExit("error: --trial-rounds must be at least 2 (a spread needs two runs)")
        results = flag_trials(args, argv)
    else:
        results = [run_worker(job, argv) for job in plan(args)]
    measured = next((r for r in results if "error" not in r), None)
    if measured is None:
        raise SystemExit("error: every configuration failed:\n" +
                         "\n".join(f"  {r['framework']} {r['mode']}: {r['error']}" for r in results))
    out = given or output_path(measured)
    previous = previous_report(out) if previous is None else previous
    if args.xla_flags_trial:
        verdicts = flag_verdicts(results)
        report = {**previous, "xla_flag_trials": results, "xla_flag_verdicts": verdicts}
        write_report(out, report)
        print(trials_markdown(results, verdicts))
        return 0
    cfg = config_lib.from_args(args)
    report = {
        "device": measured["device"], "platform": measured["platform"],
        "cpu": measured["cpu"], "cpuid": measured["cpuid"], "cpu_family": measured["cpu_family"],
        "cpu_features": measured["cpu_features"], "xla_flags": measured["xla_flags"],
        "cpu_count": measured["cpu_count"], "preset": args.preset,
        "overrides": args.overrides,
        "img_size": cfg.model.img_size, "batch": args.batch, "steps": args.steps,
        "warmup": args.warmup, "peak_tflops": peak_tflops(args, measured["device"]),
        "versions": {k: v for r in results for k, v in r.get("versions", {}).items()},
        "results": results,
    }
    add_mfu(results, report["peak_tflops"])
    report["ratios"] = ratios(results)
    # The flag trials are a separate measurement: a new comparison keeps the file's last ones.
    report.update({k: previous[k] for k in ("xla_flag_trials", "xla_flag_verdicts") if k in previous})
    write_report(out, report)
    print(markdown(report))
    return 0


def output_path(measured: dict) -> Path:
    # One file per CPU family: figures of one family are never taken for another's.
    slug = re.sub(r"[^a-z0-9]+", "-", measured["device"].lower()).strip("-")
    if measured["platform"] == "cpu":
        slug = f"cpu-{measured['cpu_family']}"
    return Path(__file__).resolve().parent / "results" / f"bench-{slug}.json"


def previous_report(path: Path) -> dict:
    """The bench report already at `path` ({} if there is none)."""
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: not a readable bench report ({err}); move it aside "
                         "or name another file with --json")
    if not isinstance(report, dict):
        raise SystemExit(f"error: {path}: not a bench report (a JSON object); move it aside or "
                         "name another file with --json")
    return report


def write_report(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
