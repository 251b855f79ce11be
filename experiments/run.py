"""Reruns a table of the paper: ``python -m experiments.run --table N``.

    python -m experiments.run --table 6 --data DIR --bands pbvs2026 --folds 0,1,2,3,4
    python -m experiments.run --table 6 --preset-override tiny     # CPU: synthetic data, small model

For every row of the table (experiments/tables.py) it loads the row's config
(experiments/configs/table{N}/{row}.toml), puts the override preset's own keys on top (``tiny``
changes only sizes and budgets, so each row keeps its variant), then ``--data``, ``--bands``
and ``--set``; trains each fold with jaxswin.train.train_fold into WORKDIR/table{N}/{row}/fold{k}
(a finished fold is reused, an interrupted one resumes) and scores the fold's best weights on its
held-out fold. Table 11's rows are TTA strategies of one model: it is trained once (from the first
row's config, in table11/none/) and evaluated on the held-out fold with each row's predict.tta.
It writes WORKDIR/table{N}.md and .csv: the paper's value beside ours, mean ± std (population)
over the folds when more than one ran. Rows of the table not run this time show the finished runs
found under WORKDIR with the same config, so a table can be filled in a few rows at a time.

Folds: by default the rows the paper marks † (single-fold results on the challenge's validation
split) train on the dataset's own train/validation split (``official``) when the data has one, and
every other row on fold 0; Tables 10 and 13 (and Table 3's attention row) are 5-fold CV: pass
--folds 0,1,2,3,4 to compare. ``--folds`` sets the folds of every row. Without --data the rows
train on the embedded synthetic dataset, which checks the machinery, not the paper's numbers.
``--set data.folds=spatial`` holds out blocks of ground instead of random tiles (the score on
unseen terrain); the table's Folds column and header say which kind each score is.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments import tables
from jaxswin import config as config_lib
from jaxswin import console, metrics, weights
from jaxswin.data.folds import held_out_kind
from jaxswin.errors import ConfigError, UserError, cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Train and evaluate every row of one of the paper's tables; write it as "
                    "Markdown and CSV with the paper's values beside ours.",
    )
    parser.add_argument("--table", type=int, required=True,
                        help=f"the paper's table: {', '.join(map(str, tables.TABLES))}")
    parser.add_argument("--data", help="dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--bands", help="band profile of the files (pbvs2026, mmlsv2, mmlsv1) or a "
                                        "comma-separated list of channel names")
    parser.add_argument("--folds",
                        help="comma-separated folds to train, e.g. 0,1,2,3,4, or 'official' "
                             "(default: the official split for the rows the paper marks † when "
                             "the data has a validation split, else fold 0)")
    parser.add_argument("--rows", help="comma-separated row keys to run (default: every row); "
                                       "see experiments/configs/table{N}/")
    parser.add_argument("--preset-override", metavar="PRESET",
                        help="a preset (e.g. tiny) whose own keys replace the rows' values")
    parser.add_argument("--workdir", default="runs/tables",
                        help="where the runs and tables go (default: runs/tables)")
    config_lib.add_arguments(parser, preset=False)  # --set, applied to every row
    parser.add_argument("--pretrained", action="append", default=[], metavar="FILE",
                        help="converted SwinV2 weights (jaxswin-convert timm), repeatable: each "
                             "row uses the file of its model.encoder (e.g. give SwinV2-T and -S)")
    return parser


# ----------------------------------------------------------------------------- configs


def parse_folds(text: str, num_folds: int) -> list:
    from jaxswin.train import parse_fold

    try:
        folds = [parse_fold(part.strip(), num_folds) for part in text.split(",") if part.strip()]
    except ConfigError:
        folds = []
    if not folds or "all" in folds:
        raise ConfigError(f"--folds {text}: list folds 0..{num_folds - 1} (e.g. 0,1,2,3,4) "
                          "or 'official'")
    return list(dict.fromkeys(folds))


def own_keys(preset: str) -> dict:
    """The sections and keys set by the preset file itself (not by its base)."""
    try:
        table = config_lib.read_toml(config_lib.locate(preset))
    except ConfigError as err:
        raise ConfigError(f"--preset-override {preset}: {err}") from None
    return {k: v for k, v in table.items() if k not in ("base", "name")}


def row_config(table: tables.Table, row: tables.Row, override: dict,
               args: argparse.Namespace) -> config_lib.Config:
    cfg = config_lib.load(table.config_name(row))
    cfg = config_lib.merge(cfg, override, f"--preset-override {args.preset_override}")
    return config_lib.validate(config_lib.apply_overrides(cfg, config_lib.option_overrides(args)))


def pretrained_by_encoder(paths: list[str]) -> dict[str, str]:
    """encoder name -> file, from the timm model name jaxswin-convert timm records."""
    found = {}
    for path in paths:
        try:
            encoder = weights.metadata(path).get("model")
        except UserError as err:
            raise UserError(f"--pretrained {err}") from None
        if not encoder:
            raise UserError(f"--pretrained {path}: no SwinV2 model name in its metadata; convert "
                            "the weights with jaxswin-convert timm")
        found[encoder] = path
    return found


# ----------------------------------------------------------------------------- scores


def is_finished(fold_dir: Path, cfg: config_lib.Config) -> bool:
    saved = fold_dir / "config.toml"
    return ((fold_dir / "summary.json").exists() and saved.exists()
            and saved.read_text() == config_lib.to_toml(cfg))


def fold_scores(fold_dir: Path) -> dict:
    """The best epoch's scores on the held-out fold, as train.py recorded them (and a late
    fusion's blend weight sigma(alpha), read from its weights)."""
    path = fold_dir / "best" / "metrics.json"
    if not path.is_file():
        raise UserError(f"{fold_dir}: a finished run without best/metrics.json; move the folder "
                        "aside to train this fold again")
    best = json.loads(path.read_text())
    scores = {**{k: best[k] for k in metrics.KEYS}, "epoch": best["epoch"]}
    blend_logit = weights.tensor(fold_dir / "best" / "model.safetensors", BLEND_LOGIT)
    if blend_logit is not None:
        scores["alpha_rgb"] = float(1 / (1 + np.exp(-blend_logit)))
    return scores


BLEND_LOGIT = "params/blend_logit"  # arch "late": logits blended by sigma(blend_logit)


def row_folds(row: tables.Row, cfg: config_lib.Config, args: argparse.Namespace) -> list:
    """The folds of a row: --folds when given; else the official split for a row the paper
    scored on the challenge's validation split (†) when the data has one, else fold 0."""
    if args.folds is not None:
        return parse_folds(args.folds, cfg.data.num_folds)
    if row.on_validation_split:
        from jaxswin import data as data_lib

        dataset = data_lib.open_dataset(cfg.data.root or None, cfg.data.bands, cfg.model.img_size)
        if "val" in dataset.splits:
            return ["official"]
    return [0]


def tta_scores(cfg: config_lib.Config, fold, fold_dir: Path, compute: bool) -> dict | None:
    """The fold's best weights scored on its held-out fold with cfg.predict.tta (cached)."""
    cache = fold_dir / f"tta-{cfg.predict.tta}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if not compute:
        return None
    from jaxswin import data as data_lib
    from jaxswin import inference

    dataset = data_lib.open_dataset(cfg.data.root or None, cfg.data.bands, cfg.model.img_size)
    images, masks = dataset.load()
    _, val_idx = data_lib.folds.split_for(dataset, fold, cfg.data)
    ensemble = inference.load_ensemble(
        [fold_dir / "best"], cfg.predict.tta, cfg.predict.batch_size, cfg.predict.precision
    )
    ensemble.predict_proba(images[val_idx[:1]])  # compiles: the timing below is prediction only
    start = time.perf_counter()
    probs = ensemble.predict_proba(images[val_idx])
    seconds = time.perf_counter() - start
    truth = masks[val_idx].reshape(probs.shape) > 0.5
    counts = metrics.confusion(probs > cfg.predict.threshold, truth)
    scores = {**metrics.summarize(counts), "seconds": seconds}
    cache.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def train_minutes(fold_dir: Path) -> float:
    log = fold_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(r["train_seconds"] for r in records) / 60


def run_table(table: tables.Table, args: argparse.Namespace) -> tuple[dict, dict]:
    """Trains the selected rows; returns row key -> fold -> scores, and row key -> config."""
    from jaxswin.train import fold_dirname, train_fold

    override = own_keys(args.preset_override) if args.preset_override else {}
    pretrained = pretrained_by_encoder(args.pretrained)
    rows = [r for r in table.rows if r.reproduced]
    configs = {r.key: row_config(table, r, override, args) for r in rows}
    if args.folds is not None:  # a bad --folds fails before any training
        parse_folds(args.folds, configs[rows[0].key].data.num_folds)
    selected = {table.row(k.strip()).key for k in args.rows.split(",")} if args.rows else set(configs)
    workdir = Path(args.workdir) / f"table{table.number}"

    results: dict[str, dict] = {}
    for row in rows:
        cfg, run_cfg = configs[row.key], configs[table.run_key(row)]
        run_dir = workdir / table.run_key(row)
        scores = {}
        for fold in row_folds(table.rows[0] if table.shared_run else row, run_cfg, args):
            fold_dir = run_dir / fold_dirname(fold)
            if not is_finished(fold_dir, run_cfg):
                if row.key not in selected:
                    continue
                train_fold(run_cfg, fold, run_dir, pretrained.get(run_cfg.model.encoder))
            fold_result = fold_scores(fold_dir)
            if table.shared_run:
                tta = tta_scores(cfg, fold, fold_dir, compute=row.key in selected)
                if tta is None:
                    continue
                fold_result.update(tta)
            scores[fold] = {**fold_result, "train_minutes": train_minutes(fold_dir),
                            "held_out": held_out_kind(run_cfg.data.folds, fold)}
        results[row.key] = scores
    return results, configs


def derived(table: tables.Table, results: dict) -> dict:
    """Adds dice (= F1) and delta_miou (against the table's first row, same fold)."""
    reference = results.get(table.rows[0].key, {})
    out = {}
    for key, folds in results.items():
        out[key] = {}
        for fold, scores in folds.items():
            extra = {"dice": scores["f1"]}
            if fold in reference:
                extra["delta_miou"] = scores["miou"] - reference[fold]["miou"]
            out[key][fold] = {**scores, **extra}
    return out


# ----------------------------------------------------------------------------- output


def mean_std(values: list[float]) -> tuple[float, float | None]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std()) if len(values) > 1 else None)


def format_value(key: str, mean: float, std: float | None) -> str:
    if key == "seconds":
        return f"{mean:.2f} s" + (f" ± {std:.2f}" if std is not None else "")
    if key == "epoch":
        return f"{mean:.0f}" if std is None else f"{mean:.1f} ± {std:.1f}"
    sign = "+" if key == "delta_miou" else ""
    return f"{mean:{sign}.4f}" + (f" ± {std:.4f}" if std is not None else "")


def ours(key: str, folds: dict) -> tuple[float, float | None] | None:
    values = [scores[key] for scores in folds.values() if key in scores]
    return mean_std(values) if values else None


def table_rows(table: tables.Table, results: dict) -> list[dict]:
    """One record per row of the paper's table: labels, the paper's values and ours."""
    records = []
    for row in table.rows:
        folds = results.get(row.key, {})
        record = {
            "table": table.number, "row": row.key, "label": row.label,
            "config": table.config_name(row) if row.reproduced else "",
            "folds": " ".join(str(f) for f in folds), "note": row.note,
            "held_out": " + ".join(dict.fromkeys(s["held_out"] for s in folds.values())),
        }
        for column, paper in zip(table.columns, row.paper, strict=True):
            value = ours(column.key, folds)
            record[f"{column.key}_paper"] = paper
            record[column.key] = value[0] if value else None
            record[f"{column.key}_std"] = value[1] if value else None
        record["train_minutes"] = (round(sum(s["train_minutes"] for s in folds.values()), 2)
                                   if folds else None)
        records.append(record)
    return records


def markdown(table: tables.Table, records: list[dict], header: str) -> str:
    columns = ["Row", "Config"]
    for column in table.columns:
        columns += [f"{column.header} (paper)", f"{column.header} (ours)"]
    columns += ["Folds", "Train min", "Note"]
    lines = [f"# Table {table.number}: {table.title}", "", header, "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        ran = bool(record["folds"])
        cells = [record["label"], f"`{record['config']}`" if record["config"] else ""]
        for column in table.columns:
            mean = record[column.key]
            if mean is not None:
                mine = format_value(column.key, mean, record[f"{column.key}_std"])
            else:
                mine = "not run" if record["config"] and not ran else "-"
            cells += [record[f"{column.key}_paper"], mine]
        minutes = record["train_minutes"]
        held_out = f" ({record['held_out']})" if record["held_out"] else ""
        cells += [record["folds"] + held_out, f"{minutes:.1f}" if minutes is not None else "",
                  record["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def describe(args: argparse.Namespace, cfg: config_lib.Config, results: dict,
             seconds: float) -> str:
    import jax

    device = jax.devices()[0]
    data = f"`{cfg.data.root}`" if cfg.data.root else "the embedded synthetic dataset"
    folds = args.folds or "official for † rows when the data has a validation split, else 0"
    parts = [f"Ours: {data} (bands {cfg.data.bands}), folds {folds}"]
    if args.preset_override:
        parts.append(f"preset override `{args.preset_override}`")
    if args.overrides:
        parts.append("`" + " ".join(f"--set {o}" for o in args.overrides) + "`")
    parts.append(f"on {jax.device_count()} × {device.device_kind} ({device.platform}); "
                 f"this invocation took {seconds / 60:.1f} min")
    kind = ", ".join(dict.fromkeys(scores["held_out"] for folds in results.values()
                                   for scores in folds.values())) or "none scored yet"
    return ", ".join(parts) + f". Scores are on each fold's held-out tiles ({kind})."


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    console.setup()  # the training runs' progress lines
    table = tables.get(args.table)
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: no such directory")
    start = time.perf_counter()
    results, configs = run_table(table, args)
    records = table_rows(table, derived(table, results))
    text = markdown(table, records, describe(args, next(iter(configs.values())), results,
                                             time.perf_counter() - start))
    out = Path(args.workdir) / f"table{table.number}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    write_csv(out.with_suffix(".csv"), records)
    print(text)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
