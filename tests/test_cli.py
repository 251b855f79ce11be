"""Every command line names itself as invoked, has --version, and lists its choices in --help."""

import subprocess
import sys

import pytest

import jaxswin
from jaxswin import evaluate, predict, train
from jaxswin.convert import __main__ as convert
from jaxswin.models import __main__ as models_cli

COMMANDS = {
    "jaxswin.train": (train.main, "jaxswin-train"),
    "jaxswin.predict": (predict.main, "jaxswin-predict"),
    "jaxswin.evaluate": (evaluate.main, "jaxswin-evaluate"),
    "jaxswin.convert": (convert.main, "jaxswin-convert"),
    "jaxswin.models": (models_cli.main, None),
}


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", COMMANDS)
def test_help_and_version_name_the_module(module, capsys):
    main, _ = COMMANDS[module]
    assert run(main, ["--help"], capsys).startswith(f"usage: python -m {module}")
    assert run(main, ["--version"], capsys).strip() == \
        f"python -m {module} (jaxswin {jaxswin.__version__})"


@pytest.mark.parametrize("module", [m for m, (_, script) in COMMANDS.items() if script])
def test_console_script_names_itself(module, capsys, monkeypatch):
    main, script = COMMANDS[module]
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", "--help"])
    assert run(main, ["--help"], capsys).startswith(f"usage: {script}")


def test_help_lists_presets_losses_and_band_profiles(capsys):
    text = " ".join(run(train.main, ["--help"], capsys).split())
    for name in ("paper", "tiny", "bce_w_dice", "lovasz", "pbvs2026", "mmlsv2", "mmlsv1"):
        assert name in text, name
    text = " ".join(run(predict.main, ["--help"], capsys).split())
    for name in ("pbvs2026", "mmlsv1", "rot4", "d4"):
        assert name in text, name
    assert "tiny" in run(convert.main, ["twin", "--help"], capsys)
    assert "tiny" in run(models_cli.main, ["summary", "--help"], capsys)
    assert run(convert.main, ["timm", "--help"], capsys).startswith(
        "usage: python -m jaxswin.convert timm")


def test_module_run_names_itself():
    result = subprocess.run([sys.executable, "-m", "jaxswin.evaluate", "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m jaxswin.evaluate")
