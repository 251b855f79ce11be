"""The wheel holds the jaxswin package alone, with its presets and console scripts."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("jaxswin-train", "jaxswin-predict", "jaxswin-evaluate", "jaxswin-convert")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: the wheel cannot be built offline")
    # A copy of the checkout's package sources (not its runs or caches), built without network.
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "runs", "results")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("jaxswin", "convert", "experiments", "tests"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("jaxswin-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_jaxswin_alone_with_its_presets(wheel):
    names = wheel.namelist()
    top_levels = {name.split("/")[0] for name in names}
    (info,) = [t for t in top_levels if t.endswith(".dist-info")]
    assert top_levels == {"jaxswin", info}
    assert {f"jaxswin/configs/{preset}.toml"
            for preset in ("paper", "tiny", "paper_text", "tiny_text")} <= set(names)
    assert "jaxswin/convert/from_timm.py" in names
    entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    for script in SCRIPTS:
        assert f"{script} = " in entry_points, script
