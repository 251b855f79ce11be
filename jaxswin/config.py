"""Run configuration as data.

A run is described by one :class:`Config` (model, data, train and predict sections). Presets are
TOML files shipped in the package (``jaxswin/configs/``: ``paper``, ``tiny``), read with
importlib.resources; a folder of further presets can be added with :func:`add_presets` (the
repository's ``experiments`` package adds its table rows, e.g. ``table6/l4``). A preset may name
another as its ``base`` and change only what differs, so every ablation row is a few lines on top
of ``paper.toml``. The command line changes single values with ``--set section.key=value`` (the
value is read as TOML, so ``--set train.lr=1e-3``, ``--set model.fusion="eca"`` and
``--set model.bands=["red","dem"]`` all work; a bare word is taken as a string);
:func:`add_arguments` and :func:`from_args` give every CLI the same ``--preset`` and ``--set``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from jaxswin.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    # dual: two encoders fused per scale (the paper); late: one encoder-decoder per modality,
    # blended by a learned sigma(alpha); single: one encoder on `bands` (Tables 3 and 5).
    arch: str = "dual"
    encoder: str = "swinv2_small_window8_256"  # a named SwinV2 config (jaxswin.models.swinv2)
    img_size: int = 128
    # Channels the single encoder sees (canonical names); empty = all seven.
    bands: tuple[str, ...] = ()
    fusion: str = "concat"  # concat | weighted_sum | eca | se | cbam
    decoder: str = "unetpp"  # unetpp | fpn | upernet | segformer | deeplabv3plus | hybrid
    decoder_channels: int = 256
    deep_supervision: bool = False
    # Channel attention of Table 10: none | eca | se | cbam.
    input_attention: str = "none"
    encoder_attention: str = "none"
    decoder_attention: str = "none"
    dropout: float = 0.1
    drop_path_rate: float = 0.1
    head_dropout: str = "element"  # element: single values | channel: whole maps (Dropout2d)
    aux_order: tuple[str, ...] = ("thermal", "slope", "dem", "gray")  # AUX encoder's input order
    fusion_weight: float = 0.5  # w of fusion weighted_sum_fixed: w*F_rgb + (1-w)*F_aux


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset root; empty = the embedded synthetic dataset
    bands: str = "pbvs2026"  # band profile name, or a comma-separated list of channel names
    num_folds: int = 5
    fold_seed: int = 42
    augment: bool = True
    workers: int = 2  # grain worker processes; 0 = in the main process (best on 2 cores)
    # Leave the geometric warp of the augmentation to the training step on the device: the
    # host then only shuffles, flips and colours (~2x the tiles/s of a host warp on 2 cores).
    device_warp: bool = True
    # A band profile the pixels contradict (jaxswin.data.inspect): error | warn | off.
    band_check: str = "error"
    # Tiles of another size than model.img_size are resized to it on loading (bilinear images,
    # nearest-neighbour masks), as the paper does; false makes such a tile an error.
    resize: bool = False
    # stratified (random, by foreground) | kfold (random: the authors' sklearn KFold) | spatial
    # (blocks of ground with a buffer: the score on unseen terrain).
    folds: str = "stratified"
    affine_border: str = "reflect"  # reflect-101 (as the code asks) | constant 0 (as it ran)
    blur: str = "kernel"  # kernel: 3/5/7, OpenCV's sigma | sigma: U[0.5,3], kernel int(3.5s)*2+1
    stats: str = "fold"  # z-score stats from the training fold | all: every labelled tile (authors)
    block_size: int = 4  # spatial folds: side of a block, in tiles
    buffer: int = 1  # spatial folds: training tiles within this many tiles of a held-out tile are dropped
    grid_pattern: str = ""  # spatial folds without georeference: regex with (?P<row>) (?P<col>) groups
    augment_strength: str = "standard"  # standard (Table 4) | strong (distortions, dropout, wider)
    band_dropout: float = 0.0  # probability of blanking each band of a training tile
    border_smoothing: float = 0.0  # training targets eased towards 1/2 at mask borders by this


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 16  # global batch, split across every device of every host
    eval_batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 3.0
    ema: bool = True
    ema_decay: float = 0.995
    loss: str = "bce_w_dice"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 0
    keep_checkpoints: int = 3
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 caps it (quick runs, CI)
    # AdamW decays: "none" = every parameter (the paper's recipe), "timm" = not norms, biases,
    # logit scales or the CPB position MLP (timm's rule; see jaxswin.train.decay_mask).
    decay_mask: str = "none"
    # A step with a non-finite loss or gradients (not an fp16 loss-scale overflow): "stop" the
    # run at once (exit 3), or "skip" its update and stop after max_nonfinite in a row.
    on_nonfinite: str = "stop"
    max_nonfinite: int = 10
    ema_warmup_mean: bool = False  # EMA decay min(decay, 1 - 1/(n+1)) in the warm-up steps
    ema_batch_stats: bool = True  # EMA also of BatchNorm statistics (false: raw model's ones)
    warmup_start: float = 0.0  # LR factor floor during warm-up: max(step/warmup, warmup_start)
    lr_floor: float = 0.0  # cosine decays to this fraction of lr
    dice: str = "batch"  # Dice over the whole batch | per_tile: mean over tiles of per-tile Dice
    drop_last: bool = True  # drop an epoch's last partial batch (false: keep it, as the authors)
    select_threshold: float = 0.51  # threshold scoring raw vs EMA weights each epoch


@dataclass(frozen=True)
class PredictConfig:
    tta: str = "rot4"  # none | hflip | vflip | flip2 | rot4 | d4
    threshold: float = 0.51
    batch_size: int = 32
    # Compute precision of the models' forward passes (the sum over models x views is float32).
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (as train.precision)


@dataclass(frozen=True)
class Config:
    name: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}


# Folders of presets beyond the package's own, in the order added (see add_presets).
_EXTRA_PRESETS: list[Path] = []


def add_presets(directory: str | Path) -> None:
    """Makes the .toml files under `directory` loadable by name ("table6/l4" for
    directory/table6/l4.toml); the package's own presets come first."""
    directory = Path(directory).resolve()
    if directory not in _EXTRA_PRESETS:
        _EXTRA_PRESETS.append(directory)


def _preset_roots() -> list[Traversable]:
    return [importlib.resources.files("jaxswin") / "configs", *_EXTRA_PRESETS]


def _toml_names(folder: Traversable, prefix: str = ""):
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _toml_names(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".toml"):
            yield prefix + entry.name.removesuffix(".toml")


def preset_names() -> list[str]:
    """Every preset name load() accepts, sorted."""
    return sorted({name for root in _preset_roots() for name in _toml_names(root)})


def locate(name_or_path: str) -> Traversable:
    """The file of a preset name, or the path itself for a .toml path or existing file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        return candidate
    for root in _preset_roots():
        preset = root.joinpath(*f"{name_or_path}.toml".split("/"))
        if preset.is_file():
            return preset
    raise ConfigError(
        f"unknown preset '{name_or_path}' (presets: {', '.join(preset_names())}; or pass a "
        "path to a .toml file)"
    )


def read_text(source: Traversable, fix: str) -> str:
    """The text of a config file; one that is missing or cannot be read as text (a folder, a
    binary file, no permission) is a ConfigError naming it and `fix`."""
    try:
        return source.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except IsADirectoryError:
        reason = "it is a folder"
    except UnicodeDecodeError as err:
        reason = f"not a text file ({err.reason} at byte {err.start})"
    except OSError as err:
        reason = err.strerror or str(err)
    raise ConfigError(f"{source}: cannot be read as a config file, {reason}; {fix}")


def read_toml(source: Traversable) -> dict:
    """The TOML table of a config file or preset; a missing or malformed file is a ConfigError."""
    text = read_text(source, "pass a preset name or a TOML file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML ({err})") from None


def _section_class(section: str) -> type:
    hints = typing.get_type_hints(Config)
    return hints[section]


def _did_you_mean(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _coerce(cls: type, key: str, value, where: str):
    """Checks `value` against the type of `cls.key`; lists become tuples, ints may be floats."""
    hints = typing.get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(
            f"{where}: unknown key '{key}'{_did_you_mean(key, hints)} (known keys: {known})"
        )
    kind = hints[key]
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of strings, got {value!r}")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")  # a bug in this file, not input


def merge(cfg: Config, table: dict, where: str) -> Config:
    """Returns `cfg` with the values of a TOML-shaped dict (sections of keys) applied."""
    changes = {}
    for section, values in table.items():
        if section == "name":
            changes["name"] = str(values)
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section [{section}]{_did_you_mean(section, SECTIONS)} "
                f"(sections: {', '.join(SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys")
        cls = _section_class(section)
        current = getattr(cfg, section)
        updates = {k: _coerce(cls, k, v, f"{where} [{section}]") for k, v in values.items()}
        changes[section] = dataclasses.replace(current, **updates)
    return dataclasses.replace(cfg, **changes)


def load_file(path: str | Path | Traversable) -> Config:
    """Reads and validates a TOML config; a top-level `base = "NAME"` starts from that preset."""
    return validate(_read_file(Path(path) if isinstance(path, str) else path, ()))


def _read_file(source: Path | Traversable, _seen: tuple[str, ...]) -> Config:
    """The config of a TOML file, not yet validated (a later --set may still fix a value)."""
    if str(source) in _seen:
        chain = " -> ".join((*_seen, str(source)))
        raise ConfigError(f"{source}: 'base' presets form a cycle ({chain})")
    table = read_toml(source)
    base = table.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{source}: 'base' must be a preset name or a .toml path in quotes, "
                          f"got {base!r}")
    cfg = _load(base, (*_seen, str(source))) if base else Config()
    table.setdefault("name", source.name.removesuffix(".toml"))
    return merge(cfg, table, str(source))


def _load(name_or_path: str, seen: tuple[str, ...]) -> Config:
    source = locate(name_or_path)
    cfg = _read_file(source, seen)
    if source == Path(name_or_path):  # a path: the file's own name (or its stem)
        return cfg
    return dataclasses.replace(cfg, name=name_or_path)  # a preset is called by its name


def load(name_or_path: str = "paper", overrides: typing.Sequence[str] = ()) -> Config:
    """The preset (a name, see preset_names(), or a .toml path) with `section.key=value`
    overrides applied, validated (:func:`validate`)."""
    return validate(apply_overrides(_load(name_or_path, ()), overrides))


# Allowed values of numeric keys as intervals: "[" / "]" include the bound, "(" / ")" do not.
RANGES = {
    "data.num_folds": "[2, inf)",
    "data.fold_seed": "[0, inf)",
    "data.workers": "[0, inf)",
    "train.epochs": "[1, inf)",
    "train.batch_size": "[1, inf)",
    "train.eval_batch_size": "[1, inf)",
    "train.lr": "(0, inf)",
    "train.weight_decay": "[0, inf)",
    "train.warmup_epochs": "[0, inf)",
    "train.ema_decay": "(0, 1)",
    "train.seed": "[0, 4294967296)",  # the data pipeline's seed is a uint32
    "train.keep_checkpoints": "[1, inf)",
    "train.max_steps_per_epoch": "[0, inf)",
    "predict.threshold": "(0, 1)",
    "predict.batch_size": "[1, inf)",
    "train.warmup_start": "[0, 1]",
    "train.lr_floor": "[0, 1)",
    "train.select_threshold": "(0, 1)",
    "train.max_nonfinite": "[1, inf)",
    "data.block_size": "[1, inf)",
    "data.buffer": "[0, inf)",
    "data.band_dropout": "[0, 1)",
    "data.border_smoothing": "[0, 1)",
}


def _in_interval(value: float, interval: str) -> bool:
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def check_range(dotted: str, value, given: str | None = None) -> None:
    """A ConfigError unless `value` lies in RANGES[dotted]; `given` is how the user gave it (an
    option and its value; default the key and value)."""
    interval = RANGES[dotted]
    if not _in_interval(value, interval):
        raise ConfigError(f"{given or f'{dotted} = {value!r}'} is out of range: allowed {interval}")


def _choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the named-choice keys outside [model], from their registries."""
    from jaxswin import losses, resilience, runtime, tta  # they import jax: only when checked
    from jaxswin.data import augment, folds, inspect

    precisions = ("auto", *runtime.PRECISIONS)
    return {
        "data.band_check": inspect.MODES,
        "data.folds": folds.METHODS,
        "data.affine_border": augment.BORDERS,
        "data.blur": augment.BLUR_MODES,
        "data.augment_strength": tuple(augment.POLICIES),
        "data.stats": ("fold", "all"),
        "train.dice": losses.DICE_MODES,
        "train.on_nonfinite": resilience.NONFINITE_POLICIES,
        "train.decay_mask": ("none", "timm"),
        "train.loss": losses.NAMES,
        "train.precision": precisions,
        "predict.tta": tta.NAMES,
        "predict.precision": precisions,
    }


def validate(cfg: Config) -> Config:
    """`cfg` if every value is usable; else a ConfigError naming the key and what it allows.

    Runs when a config is loaded, so a bad value stops the run before any data is read.
    """
    from jaxswin.data import bands
    from jaxswin.models.dualswin import validate as validate_model

    for dotted in RANGES:
        section, key = dotted.split(".")
        check_range(dotted, getattr(getattr(cfg, section), key))
    for dotted, allowed in _choices().items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(
                f"{dotted} = {value!r} is not one of: {', '.join(allowed)}"
                f"{_did_you_mean(value, allowed)}"
            )
    bands.resolve(cfg.data.bands)
    validate_model(cfg.model)
    return cfg


def parse_override(text: str) -> tuple[str, str, object]:
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value, e.g. train.lr=1e-3")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text}: expected section.key=value, e.g. train.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set model.decoder=fpn
    return parts[0], parts[1], value


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    for text in overrides:
        section, key, value = parse_override(text)
        cfg = merge(cfg, {section: {key: value}}, f"--set {text}")
    return cfg


# Dedicated flags some CLIs have, as the config keys they set (before any --set).
FLAG_KEYS = {"data": "data.root", "bands": "data.bands", "band_check": "data.band_check",
             "precision": "train.precision"}


def add_arguments(parser: argparse.ArgumentParser, preset: bool = True) -> None:
    """--preset (listing the presets) and --set, the same on every command."""
    if preset:
        parser.add_argument(
            "--preset", default="paper",
            help=f"config preset: {', '.join(preset_names())}, or a .toml path "
                 "(default: paper, the paper's recipe; tiny for a CPU)",
        )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="change one config value, e.g. --set train.epochs=10 (repeatable; read as TOML)",
    )


def option_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides a command line asks for: its dedicated flags (--data, --bands,
    --precision, where it has them), then every --set (which wins)."""
    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items()
             if getattr(args, flag, None) is not None]
    return [*flags, *args.overrides]


def from_args(args: argparse.Namespace) -> Config:
    """The config a command line made with add_arguments describes."""
    return load(args.preset, option_overrides(args))


def to_dict(cfg: Config) -> dict:
    out = dataclasses.asdict(cfg)
    for section in SECTIONS:
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in out[section].items()}
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The full config as TOML, loadable again with `load(path)` (runs store it beside their weights)."""
    table = to_dict(cfg)
    lines = [f"name = {_toml_value(table.pop('name'))}"]
    for section, values in table.items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
