"""What every command line shares: its name as invoked, --version, and the lists of choices
(presets, losses, band profiles) its --help shows."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import jaxswin


def program_name(module: str) -> str:
    """The command as the user typed it, for usage lines: a console script's name
    (``jaxswin-train``), a script's path (``python convert/timm_to_flax.py``), else
    ``python -m MODULE``."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if invoked.startswith("jaxswin-"):
        return invoked
    run_as_file = getattr(sys.modules.get("__main__"), "__spec__", None) is None
    if invoked.endswith(".py") and invoked != "__main__.py" and run_as_file:
        return f"python {sys.argv[0]}"
    return f"python -m {module}"


def parser(module: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser named as invoked, with --version; the epilog keeps its line breaks."""
    made = argparse.ArgumentParser(
        prog=program_name(module), description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    made.add_argument("--version", action="version",
                      version=f"%(prog)s (jaxswin {jaxswin.__version__})")
    return made


def listing(title: str, names) -> str:
    """One epilog paragraph: 'title: a, b, c' wrapped under 100 columns."""
    return textwrap.fill(f"{title}: {', '.join(names)}", width=96, subsequent_indent="  ")


def band_profiles() -> str:
    from jaxswin.data import bands

    return listing("band profiles (--bands, data.bands)",
                   [f"{name} ({','.join(channels)})" for name, channels in bands.PROFILES.items()])


def losses() -> str:
    from jaxswin import losses as losses_lib

    return listing("losses (--set train.loss=NAME)", losses_lib.NAMES)


def presets() -> str:
    from jaxswin import config

    return listing("presets (--preset)", config.preset_names())
