"""experiments/: the paper's tables, their row configs, the table runner and the benchmark."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import experiments
from experiments import run, tables
from jaxswin import config as config_lib
from jaxswin.errors import UserError

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "DualSwinFusionSeg.txt"
TINY_RUN = ["--preset-override", "tiny", "--set", "train.epochs=1",
            "--set", "train.max_steps_per_epoch=1", "--set", "train.batch_size=4",
            "--set", "train.eval_batch_size=8"]

SWINT_FPN = {"arch": "single", "encoder": "swinv2_tiny_window8_256", "decoder": "fpn"}
RGB = ["red", "green", "blue"]
# What each row changes from paper.toml, written from the paper's row labels and §4.4 text.
EXPECTED = {
    5: {
        "rgb_dem": {**SWINT_FPN, "bands": RGB + ["dem"], "loss": "bce_dice"},
        "rgb_thermal": {**SWINT_FPN, "bands": RGB + ["thermal"], "loss": "bce_dice"},
        "rgb_dem_slope": {**SWINT_FPN, "bands": RGB + ["dem", "slope"], "loss": "bce_dice"},
        "rgb_dem_thermal": {**SWINT_FPN, "bands": RGB + ["dem", "thermal"], "loss": "bce_dice"},
        "all7": {**SWINT_FPN, "loss": "bce_dice"},
    },
    6: {
        f"l{i}": {**SWINT_FPN, "loss": loss}
        for i, loss in enumerate(
            ["bce", "dice", "bce_dice", "bce_w_dice", "focal", "focal_dice", "soft_iou",
             "bce_soft_iou", "tversky", "dice_boundary_dice", "dice_lovasz", "bce_w_dice_lovasz"],
            start=1,
        )
    },
    7: {
        "fpn": {"fusion": "weighted_sum", "decoder": "fpn"},
        "upernet": {"fusion": "weighted_sum", "decoder": "upernet"},
        "segformer": {"fusion": "weighted_sum", "decoder": "segformer"},
        "deeplabv3plus": {"fusion": "weighted_sum", "decoder": "deeplabv3plus"},
        "unetpp": {"fusion": "weighted_sum"},
    },
    8: {
        "fpn_concat": {"decoder": "fpn"},
        "upernet_concat": {"decoder": "upernet"},
        "unetpp_concat": {},
        "unetpp_weighted_sum": {"fusion": "weighted_sum"},
        "upernet_weighted_sum": {"decoder": "upernet", "fusion": "weighted_sum"},
    },
    9: {"unetpp": {}, "hybrid": {"decoder": "hybrid"}},
    10: {
        key: {"decoder": "hybrid", "input_attention": ia, "encoder_attention": ie,
              "decoder_attention": do, "fusion": gate}
        for key, ia, ie, do, gate in [
            ("e10a", "none", "eca", "none", "eca"), ("e10b", "none", "eca", "none", "cbam"),
            ("e11", "eca", "eca", "cbam", "cbam"), ("e12", "eca", "eca", "eca", "eca"),
            ("e13", "eca", "eca", "se", "se"), ("e9", "eca", "se", "cbam", "eca"),
        ]
    },
    11: {tta: {"tta": tta} for tta in ("none", "hflip", "vflip", "flip2", "rot4", "d4")},
    12: {"ema": {"ema": True}, "no_ema": {"ema": False}},
    13: {"mid": {}, "late": {"arch": "late"}},
}


def flat(cfg: config_lib.Config) -> dict:
    """"section.key" -> value of every config field."""
    table = config_lib.to_dict(cfg)
    return {f"{section}.{k}": v for section in config_lib.SECTIONS for k, v in table[section].items()}


def dotted(short: dict) -> dict:
    """EXPECTED's short names as "section.key" (loss and ema are train's, tta predict's)."""
    sections = {"loss": "train", "ema": "train", "tta": "predict"}
    return {f"{sections.get(k, 'model')}.{k}": v for k, v in short.items()}


def changes(cfg: config_lib.Config) -> dict:
    """Field -> value of every config field that differs from paper.toml (sections flattened)."""
    paper = flat(config_lib.load("paper"))
    return {k: v for k, v in flat(cfg).items() if paper[k] != v}


# ----------------------------------------------------------------------------- tables and configs


def test_every_row_config_exists_and_every_config_is_a_row():
    root = experiments.CONFIGS
    files = {str(p.relative_to(root).with_suffix("")) for p in root.glob("table*/*.toml")}
    rows = {t.config_name(r) for t in tables.TABLES.values() for r in t.rows if r.reproduced}
    assert files == rows
    for table in tables.TABLES.values():
        assert len({r.key for r in table.rows}) == len(table.rows)
        for row in table.rows:
            assert len(row.paper) == len(table.columns), (table.number, row.key)
            assert row.reproduced or row.note.startswith("not reproduced")
            if row.reproduced:
                assert config_lib.load(table.config_name(row)).name == table.config_name(row)


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_row_configs_change_only_what_the_row_changes(number):
    table = tables.get(number)
    assert [r.key for r in table.rows] == list(EXPECTED[number])
    paper = flat(config_lib.load("paper"))
    for row in table.rows:
        cfg = config_lib.load(table.config_name(row))
        expected = dotted(EXPECTED[number][row.key])
        assert all(flat(cfg)[k] == v for k, v in expected.items()), row.key
        assert changes(cfg) == {k: v for k, v in expected.items() if paper[k] != v}, row.key


def test_table3_rows_are_the_rows_of_the_later_tables():
    same = {
        "swint_fpn_rgb_dem": "table5/rgb_dem", "swint_fpn_all7": "table5/all7",
        "swint_fpn_bce_w_dice": "table6/l4", "swint_fpn_leaderboard": "table6/l4",
        "dual_s_unetpp_weighted_sum": "table7/unetpp", "dual_s_fpn_concat": "table8/fpn_concat",
        "dual_s_hybrid": "table9/hybrid", "dual_s_unetpp": "paper",
    }
    table = tables.get(3)
    for key, other in same.items():
        mine = config_lib.load(table.config_name(table.row(key)))
        assert changes(mine) == changes(config_lib.load(other)), key
    # ...and the paper prints the same scores for both (Table 3 quotes the ablations).
    assert table.row("swint_fpn_bce_w_dice").paper == tables.get(6).row("l4").paper
    assert table.row("dual_s_hybrid").paper == tables.get(9).row("hybrid").paper[::5]
    assert changes(config_lib.load("table3/dual_t_fpn_gated")) == dotted(
        {"encoder": "swinv2_tiny_window8_256", "decoder": "fpn", "fusion": "eca"})
    assert [r.key for r in table.rows if not r.reproduced] == ["mmsformer", "dual_s_unetpp_test"]


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
@pytest.mark.parametrize("number", sorted(set(tables.TABLES) - {13}))
def test_published_values_are_the_papers(number):
    """Each row's values appear, in order, on one line of the paper's printed table."""
    text = PAPER.read_text()
    start = text.index(f"Table {number}. ")
    block = text[start:start + 2500].splitlines()
    for row in tables.get(number).rows:
        values = [v for v in row.paper if v != "-"]
        pattern = r"\s.*".join(re.escape(v).replace(r"\ ±\ ", r"\s*±\s*") for v in values)
        assert any(re.search(r"(^|\s)" + pattern + r"(\s|$)", line) for line in block), row.label


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
def test_late_fusion_values_are_the_papers_text():
    """Table 13 has no printed table: its values are in §4.4's late-fusion paragraph."""
    paragraph = next(line for line in PAPER.read_text().splitlines()
                     if line.startswith("Late Fusion Ablation."))
    mid, late = (tables.get(13).row(key).paper for key in ("mid", "late"))
    assert f"({late[0]} vs. {mid[0]})" in paragraph
    assert late[1] == "≈ 0.48" and r"\approx 0.48" in paragraph


def test_unknown_table_and_row_are_user_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--table", "4"])
    assert exit_info.value.code == 2
    assert "--table 4: choose one of 2, 3, 5, 6" in capsys.readouterr().err
    with pytest.raises(UserError, match="Table 6 has no row 'l13'"):
        tables.get(6).row("l13")


@pytest.mark.parametrize("argv, says", [
    (["--set", "train.epochs=0"], "train.epochs = 0 is out of range: allowed [1, inf)"),
    (["--set", "train.loss=nope"], "train.loss = 'nope' is not one of"),
    (["--folds", "7"], "--folds 7: list folds 0..4"),
    (["--folds", "0,x"], "--folds 0,x: list folds 0..4"),
])
def test_bad_settings_stop_before_any_training(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--table", "6", "--workdir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained


def test_a_finished_fold_without_best_weights_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}: a finished run without best/metrics.json"):
        run.fold_scores(tmp_path)


def test_override_preset_keeps_each_rows_variant():
    args = run.build_parser().parse_args(["--table", "8", "--preset-override", "tiny"])
    override = run.own_keys("tiny")
    tiny = config_lib.load("tiny")
    for row in tables.get(8).rows:
        cfg = run.row_config(tables.get(8), row, override, args)
        row_cfg = config_lib.load(tables.get(8).config_name(row))
        assert cfg.model.encoder == tiny.model.encoder
        assert cfg.model.decoder_channels == tiny.model.decoder_channels
        assert (cfg.model.decoder, cfg.model.fusion) == (row_cfg.model.decoder, row_cfg.model.fusion)


# ----------------------------------------------------------------------------- aggregation


def test_mean_std_over_folds_and_deltas():
    rng = np.random.default_rng()
    table = tables.get(11)
    folds = {f: {"miou": rng.random(), "f1": rng.random(), "epoch": 3, "train_minutes": 0.5,
                 "held_out": "spatial fold"} for f in range(3)}
    other = {f: {**s, "miou": s["miou"] + 0.01 * (f + 1)} for f, s in folds.items()}
    results = run.derived(table, {"none": folds, "hflip": other})
    records = {r["row"]: r for r in run.table_rows(table, results)}
    mious = [s["miou"] for s in folds.values()]
    assert records["none"]["miou"] == pytest.approx(np.mean(mious))
    assert records["none"]["miou_std"] == pytest.approx(np.std(mious))
    assert records["hflip"]["delta_miou"] == pytest.approx(0.02)
    assert records["hflip"]["delta_miou_std"] == pytest.approx(np.std([0.01, 0.02, 0.03]))
    assert records["vflip"]["miou"] is None and records["vflip"]["folds"] == ""
    assert records["none"]["held_out"] == "spatial fold" and records["vflip"]["held_out"] == ""
    text = run.markdown(table, list(records.values()), "header")
    assert "| 0 1 2 (spatial fold) |" in text
    assert records["d4"]["miou_paper"] == "0.8231"
    one = run.table_rows(table, run.derived(table, {"none": {0: folds[0]}}))[0]
    assert one["miou_std"] is None
    assert run.format_value("miou", 0.5, None) == "0.5000"
    assert run.format_value("delta_miou", -0.0006, 0.0001) == "-0.0006 ± 0.0001"


# ----------------------------------------------------------------------------- end to end

REPO = Path(__file__).resolve().parents[1]
# These runs take one or two steps: compile for speed of compilation, not of the code.
FAST_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **FAST_COMPILE}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {r["row"]: r for r in csv.DictReader(handle)}


def test_table6_reduced_run_has_every_row_with_the_papers_values(tmp_path):
    """The acceptance run `--table 6 --preset-override tiny`, one row trained for one step."""
    args = ["--table", "6", "--rows", "l4", "--workdir", str(tmp_path), *TINY_RUN]
    cli("experiments.run", *args)
    table = tables.get(6)
    text = (tmp_path / "table6.md").read_text()
    for row in table.rows:
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {row.label} |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == row.paper[0] and cells[4] == row.paper[1]
        assert (cells[3] == "not run") == (row.key != "l4")
    records = read_csv(tmp_path / "table6.csv")
    assert list(records) == [r.key for r in table.rows]
    assert records["l10"]["miou_paper"] == "0.704" and records["l10"]["miou"] == ""
    best = json.loads((tmp_path / "table6" / "l4" / "fold0" / "best" / "metrics.json").read_text())
    mine = records["l4"]
    assert float(mine["miou"]) == pytest.approx(best["miou"])
    assert float(mine["dice"]) == pytest.approx(best["f1"])
    assert mine["folds"] == "0" and mine["miou_std"] == ""
    assert config_lib.load_file(tmp_path / "table6" / "l4" / "fold0" / "config.toml") == \
        run.row_config(table, table.row("l4"), run.own_keys("tiny"),
                       run.build_parser().parse_args(args))

    # Run again: the finished fold is reused as it is, and every other row is still "not run".
    weights = tmp_path / "table6" / "l4" / "fold0" / "best" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    cli("experiments.run", *args)
    assert weights.stat().st_mtime_ns == written
    assert read_csv(tmp_path / "table6.csv") == records


def test_table11_tta_rows_share_one_trained_model(tmp_path):
    """TTA rows evaluate the one model; no TTA through jaxswin.predict agrees with training's
    own held-out evaluation at the same threshold (the paper's recipe selects at 0.5, predicts
    at 0.51: after one step many probabilities lie in between). (A single-encoder model keeps
    the compile short.)"""
    cli("experiments.run", "--table", "11", "--rows", "none,hflip", "--workdir", str(tmp_path),
        *TINY_RUN, "--set", "model.arch=single", "--set", "data.folds=spatial",
        "--set", "predict.threshold=0.5")
    assert [p.name for p in (tmp_path / "table11").iterdir()] == ["none"]
    fold_dir = tmp_path / "table11" / "none" / "fold0"
    best = json.loads((fold_dir / "best" / "metrics.json").read_text())
    records = read_csv(tmp_path / "table11.csv")
    none, hflip = records["none"], records["hflip"]
    assert float(none["miou"]) == pytest.approx(best["miou"], abs=1e-3)
    assert float(none["delta_miou"]) == 0.0
    assert float(hflip["delta_miou"]) == pytest.approx(float(hflip["miou"]) - float(none["miou"]))
    assert float(hflip["seconds"]) > 0 and records["d4"]["miou"] == ""
    assert none["held_out"] == "spatial fold"  # TTA scored the same spatial fold training held out
    split = json.loads((fold_dir / "summary.json").read_text())["split"]
    assert split["held_out"] == "spatial fold" and split["dropped_tiles"] > 0
    assert split["train_tiles"] + split["held_out_tiles"] + split["dropped_tiles"] == 160
    assert "(spatial fold)" in (tmp_path / "table11.md").read_text()
    cached = json.loads((fold_dir / "tta-hflip.json").read_text())
    assert cached["miou"] == pytest.approx(float(hflip["miou"]))


def test_bench_counts_the_models_flops_and_prints_ratios(tmp_path):
    """bench.py on the CPU: a row per configuration, the JAX / PyTorch ratios, and XLA's FLOP
    count of the model close to torch's own count of the twin's matmuls and convolutions."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from torch.utils.flop_counter import FlopCounterMode

    from experiments import torch_twin

    out = tmp_path / "bench.json"
    proc = cli("experiments.bench", "--preset", "tiny", "--batch", "2", "--steps", "1",
               "--warmup", "1", "--precisions", "fp32", "--torch-modes", "eager", "--json", str(out),
               "--profile", "1")
    assert "train: jax fp32 / torch eager:" in proc.stdout
    assert "| train ms per step, by op class | jax fp32 fwd | jax fp32 bwd | torch eager fwd" \
        in proc.stdout
    report = json.loads(out.read_text())
    jax_row, torch_row = report["results"]
    assert (jax_row["framework"], torch_row["framework"]) == ("jax", "torch")
    for row in report["results"]:
        assert row["train_tiles_s"] > 0 and row["infer_tiles_s"] > 0 and row["peak_memory_gib"] > 0
    assert report["ratios"]["train: jax fp32 / torch eager"] == pytest.approx(
        jax_row["train_tiles_s"] / torch_row["train_tiles_s"])
    assert jax_row["train_mfu"] is None  # a CPU has no known peak
    for row in report["results"]:  # --profile: each framework's time by op class
        train, infer = row["op_ms"]["train"], row["op_ms"]["infer"]
        for name in ("attention matmuls (q·kᵀ, attn·v)", "Log-CPB (bias MLP, gather, sigmoid)",
                     "layer norms", "3×3 convolutions", "bilinear resizes"):
            assert train[name]["forward"] > 0 and train[name]["backward"] > 0, name
            assert infer[name]["forward"] > 0 and "backward" not in infer[name], name

    model = torch_twin.DualSwinFusionSeg.from_config(config_lib.load("tiny").model)
    inputs = torch.randn(2, 3, 128, 128), torch.randn(2, 4, 128, 128)
    with FlopCounterMode(display=False) as forward:
        model.eval()(*inputs)
    with FlopCounterMode(display=False) as training:
        model.train()(*inputs).sum().backward()
    # XLA also counts elementwise work (norms, activations, softmax): a little more than torch.
    assert 1.0 <= jax_row["infer_flops_per_tile"] * 2 / forward.get_total_flops() <= 1.25
    assert 1.0 <= jax_row["train_flops_per_tile"] * 2 / training.get_total_flops() <= 1.25


@pytest.mark.parametrize("device, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("Tesla T4", 65.0), ("cpu", None),
])
def test_bench_peak_is_the_devices_own(device, peak):
    """MFU's denominator: the card's dense bf16 peak, a longer name winning over its prefix."""
    from experiments import bench

    args = bench.build_parser().parse_args([])
    assert bench.peak_tflops(args, device) == peak
    args = bench.build_parser().parse_args(["--peak-tflops", "500"])
    assert bench.peak_tflops(args, device) == 500.0


def test_bench_flag_trials_alternate_and_judge_against_the_spread(tmp_path, monkeypatch, capsys):
    """--xla-flags-trial: the jax worker under each XLA_FLAGS setting and the defaults, taking
    turns round by round, each in a process whose environment carries the flags; a setting
    helps only if its slowest run beats the defaults' fastest. The trials join the family's
    JSON beside the last comparison, and a new comparison keeps them."""
    from experiments import bench

    fast, slow = "--xla_cpu_experimental_ynn_fusion_type=dot", "--xla_cpu_use_onednn=true"
    rate = {"": [2.0, 2.2, 2.1], fast: [2.5, 2.4, 2.6], slow: [2.15, 1.9, 2.0]}
    launched = []

    def fake_run(command, env, **kwargs):
        flags = env.get("XLA_FLAGS", "")
        assert env["JAXSWIN_XLA_DEFAULTS"] == "1"  # exactly the trial's flags, no CPU flags
        launched.append((command[-1], flags))
        train = rate[flags][sum(f == flags for _, f in launched) - 1]
        result = {"framework": "jax", "mode": "fp32", "train_tiles_s": train,
                  "infer_tiles_s": 10.0, "device": "cpu", "platform": "cpu", "cpu": "Fake CPU",
                  "cpu_family": "intel", "xla_flags": flags}
        return subprocess.CompletedProcess(command, 0, bench.RESULT_TAG + json.dumps(result), "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("XLA_FLAGS", "--from_the_shell")  # each run sets its own, defaults ""
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"results": ["the last comparison"], "xla_flag_trials": ["old"]}))
    assert bench.main(["--precisions", "fp32", "--json", str(out), f"--xla-flags-trial={fast}",
                       f"--xla-flags-trial={slow}"]) == 0

    assert launched == [("jax:fp32", flags) for _ in range(3) for flags in ("", fast, slow)]
    printed = capsys.readouterr().out
    assert f"| fp32 | {fast} | train | 2.40–2.60 | 2.00–2.20 | 1.190 | yes |" in printed
    assert f"| fp32 | {slow} | train | 1.90–2.15 | 2.00–2.20 | 0.952 | no |" in printed
    report = json.loads(out.read_text())
    assert report["results"] == ["the last comparison"]
    assert [(r["round"], r["xla_flags"]) for r in report["xla_flag_trials"]] == \
        [(n, flags) for n in range(3) for flags in ("", fast, slow)]
    verdicts = {v["xla_flags"]: v for v in report["xla_flag_verdicts"]}
    assert verdicts[fast]["train"]["beyond_spread"] is True
    assert verdicts[fast]["train"]["median_ratio"] == pytest.approx(2.5 / 2.1)
    assert verdicts[slow]["train"]["beyond_spread"] is False  # 2.15 > 2.1 median, not > 2.2
    assert verdicts[slow]["train"]["tiles_s"] == [1.9, 2.15]
    assert verdicts[fast]["infer"]["beyond_spread"] is False  # level

    trials = report["xla_flag_trials"]
    monkeypatch.setattr(bench, "run_worker", lambda job, argv, flags=None: {
        "framework": "jax", "mode": "fp32", "precision": "fp32", "train_tiles_s": 2.0,
        "infer_tiles_s": 10.0, "train_first_step_s": 60.0, "peak_memory_gib": 6.0,
        "memory_source": "process peak RSS", "device": "cpu", "platform": "cpu", "cpu": "Fake CPU",
        "cpuid": "", "cpu_family": "intel", "cpu_features": [], "xla_flags": "", "cpu_count": 2})
    assert bench.main(["--only", "jax", "--precisions", "fp32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"][0]["cpu"] == "Fake CPU" and report["xla_flag_trials"] == trials
    with pytest.raises(SystemExit, match="--trial-rounds"):
        bench.main([f"--xla-flags-trial={fast}", "--trial-rounds", "1"])


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_bench_refuses_a_json_file_that_is_no_report_before_measuring(tmp_path, monkeypatch,
                                                                      content):
    from experiments import bench

    monkeypatch.setattr(bench, "run_worker", lambda *a, **k: pytest.fail("measured anyway"))
    out = tmp_path / "notes.json"
    out.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(SystemExit, match=f"{out}: not a .*bench report.*--json"):
        bench.main(["--only", "jax", "--precisions", "fp32", "--json", str(out)])
    assert out.read_bytes() == content.encode("utf-8", "surrogateescape")  # left as it was


def test_bench_matmul_prints_each_frameworks_rate_with_the_cpu(monkeypatch):
    """bench_matmul: the CPU and XLA flags named, and each framework and precision's rate
    computed as 2n³ over the matmul's median time."""
    import importlib.util

    from experiments import bench_matmul

    calls = []

    def fake_timed(step, warmup, steps, sync):  # runs the matmul once; it took 2n³ / 123 GFLOP
        calls.append(steps)
        sync(step())
        return 1.0, 2 * 64**3 / 123e9

    monkeypatch.setattr(bench_matmul, "timed", fake_timed)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert bench_matmul.main(["--size", "64", "--repeats", "3"]) == 0
    assert "XLA_FLAGS '--xla_cpu_use_onednn=false'" in lines[0] and "64² matmul" in lines[0]
    expected = ["xla fp32: 123", "xla bf16: 123"]
    if importlib.util.find_spec("torch"):
        expected += ["torch fp32: 123", "torch bf16: 123"]
    assert lines[1:] == expected
    assert calls == [3] * len(expected)
