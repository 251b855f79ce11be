"""Run configuration as data.

A run is described by one :class:`Config` (model, data, train and predict sections). Presets are
TOML files under ``experiments/configs/``; a preset may name another as its ``base`` and change
only what differs, so every ablation row is a few lines on top of ``paper.toml``. The command
line changes single values with ``--set section.key=value`` (the value is read as TOML, so
``--set train.lr=1e-3``, ``--set model.fusion="eca"`` and ``--set model.bands=["red","dem"]``
all work; a bare word is taken as a string).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
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
    folds: str = "stratified"  # stratified (random over tiles) | spatial (blocks of ground)
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


def presets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "experiments" / "configs"


def preset_names() -> list[str]:
    root = presets_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.toml"))


def _section_class(section: str) -> type:
    hints = typing.get_type_hints(Config)
    return hints[section]


def _coerce(cls: type, key: str, value, where: str):
    """Checks `value` against the type of `cls.key`; lists become tuples, ints may be floats."""
    hints = typing.get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"{where}: unknown key '{key}' (known keys: {known})")
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
                f"{where}: unknown section [{section}] (sections: {', '.join(SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys")
        cls = _section_class(section)
        current = getattr(cfg, section)
        updates = {k: _coerce(cls, k, v, f"{where} [{section}]") for k, v in values.items()}
        changes[section] = dataclasses.replace(current, **updates)
    return dataclasses.replace(cfg, **changes)


def load_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> Config:
    """Reads a TOML config; a top-level `base = "NAME"` starts from that preset."""
    path = Path(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: 'base' presets form a cycle ({chain})")
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    base = table.pop("base", None)
    cfg = _load(base, (*_seen, path)) if base else Config()
    table.setdefault("name", path.stem)
    return merge(cfg, table, str(path))


def _load(name_or_path: str, seen: tuple[Path, ...]) -> Config:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        return load_file(candidate, seen)
    preset = presets_dir() / f"{name_or_path}.toml"
    if not preset.exists():
        raise ConfigError(
            f"unknown preset '{name_or_path}': no file {preset} "
            f"(presets: {', '.join(preset_names())}; or pass a path to a .toml file)"
        )
    cfg = load_file(preset, seen)
    return dataclasses.replace(cfg, name=name_or_path)


def load(name_or_path: str = "paper", overrides: typing.Sequence[str] = ()) -> Config:
    """The preset (name under experiments/configs/ or a path) with `section.key=value` overrides."""
    return apply_overrides(_load(name_or_path, ()), overrides)


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


def to_dict(cfg: Config) -> dict:
    out = dataclasses.asdict(cfg)
    for section in SECTIONS:
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in out[section].items()}
    return out


def from_dict(table: dict, where: str = "config") -> Config:
    return merge(Config(), dict(table), where)


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
