"""The paper's experiments: its tables as data (tables.py), one config per row under configs/,
the runner (run.py), the PyTorch twin and the benchmarks. Not part of the installed package:
importing it makes the rows' configs loadable by name (e.g. ``config.load("table6/l4")``)."""

from pathlib import Path

from jaxswin import config as _config

CONFIGS = Path(__file__).resolve().parent / "configs"
_config.add_presets(CONFIGS)
