"""convert/timm_to_flax.py end to end: seeded random timm SwinV2-T/S weights saved to files,
converted with the CLI, loaded with jaxswin.models.swinv2.load, against timm's feature net."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import weights
from jaxswin.models import swinv2

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402  (after the importorskip of torch)

from convert import timm_to_flax  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("swinv2_tiny_window8_256", "swinv2_small_window8_256")


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def save_checkpoint(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:  # the wrapped layout of training scripts
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, perturb_timm):
    """name -> a file of a timm classifier's state dict (head and final norm included), with
    weights moved off timm's init; SwinV2-T as a wrapped .pth, SwinV2-S as .safetensors."""
    folder = tmp_path_factory.mktemp("timm")
    files = {}

    def make(name):
        if name not in files:
            model = perturb_timm(timm.create_model(name, pretrained=False), seed=len(files))
            suffix = ".pth" if "tiny" in name else ".safetensors"
            files[name] = save_checkpoint(model.state_dict(), folder / f"{name}{suffix}")
        return files[name]

    return make


def convert(name, source, out, in_chans, img_size):
    argv = ["--model", name, "--checkpoint", str(source), "--out", str(out)]
    timm_to_flax.main(argv + ["--in-chans", str(in_chans), "--img-size", str(img_size)])
    return out


def timm_features(name, source, in_chans, img_size):
    """timm's feature net as the paper builds it (weights from the file by timm's own loader);
    for 4 channels, a 4-channel net whose patch embedding is set by the channel-mean rule."""
    kwargs = dict(features_only=True, out_indices=(0, 1, 2, 3), img_size=img_size)
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(source)), **kwargs
    )
    if in_chans == 4:
        state = model.state_dict()
        rgb = state["patch_embed.proj.weight"]
        state["patch_embed.proj.weight"] = torch.cat([rgb, rgb.mean(dim=1, keepdim=True)], dim=1)
        model = timm.create_model(name, in_chans=4, **kwargs)
        model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("in_chans", [3, 4])
@pytest.mark.parametrize("img_size", [128, 256])
@pytest.mark.parametrize("name", MODELS)
def test_converted_weights_match_timm(checkpoint, tmp_path, name, img_size, in_chans):
    # 128: stage 3 is one unshifted 8x8 window, stage 4 clipped to a 4x4 window.
    # 256: stages 1-3 shift their windows, stage 4 is one 8x8 window.
    source = checkpoint(name)
    out = convert(name, source, tmp_path / "swin.safetensors", in_chans, img_size)
    module, variables = swinv2.load(out)
    assert (module.config, module.in_chans, module.img_size) == (
        swinv2.CONFIGS[name], in_chans, img_size
    )

    batch = 2 if img_size == 128 else 1
    images = np.random.default_rng().standard_normal(
        (batch, img_size, img_size, in_chans), np.float32
    )
    with torch.no_grad():
        expected = timm_features(name, source, in_chans, img_size)(
            torch.from_numpy(images).permute(0, 3, 1, 2)
        )
    maps = jax.jit(module.apply)(variables, images)
    assert len(maps) == len(expected) == 4
    for got, want in zip(maps, expected):
        assert got.shape == want.shape  # timm's SwinV2 feature maps are NHWC too
        assert rel_l2(got, want.numpy()) <= 1e-5

    if name == MODELS[0] and img_size == 128 and in_chans == 3:
        low = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(variables, images)
        for lo, hi in zip(low, maps):
            assert rel_l2(lo, hi) <= 2e-2


def test_metadata_and_channel_rule_of_output(checkpoint, tmp_path):
    name = MODELS[0]
    source = checkpoint(name)
    variables, metadata = weights.load(convert(name, source, tmp_path / "a.safetensors", 7, 64))
    assert metadata == {
        "model": name,
        "in_chans": "7",
        "img_size": "64",
        "source": str(source),
        "channel_rule": swinv2.channel_rule(7),
    }
    rgb = torch.load(source, weights_only=True)["state_dict"]["patch_embed.proj.weight"].numpy()
    kernel = variables["params"]["patch_embed"]["proj"]["kernel"]
    np.testing.assert_array_equal(kernel, swinv2.adapt_in_chans(rgb.transpose(2, 3, 1, 0), 7))


def test_original_microsoft_layout_converts_alike(checkpoint, tmp_path):
    """Microsoft's checkpoints downsample at the end of a stage and name the head `head.`."""
    name = MODELS[0]
    state = torch.load(checkpoint(name), weights_only=True)["state_dict"]
    original = {}
    for key, value in state.items():
        for stage in (1, 2, 3):
            key = key.replace(f"layers.{stage}.downsample.", f"layers.{stage - 1}.downsample.")
        original[key.replace("head.fc.", "head.")] = value
    original_file = tmp_path / "original.pth"
    torch.save({"model": original}, original_file)

    ours, _ = weights.load(convert(name, original_file, tmp_path / "a.safetensors", 3, 128))
    timms, _ = weights.load(convert(name, checkpoint(name), tmp_path / "b.safetensors", 3, 128))
    flat_ours, flat_timms = weights.flatten(ours), weights.flatten(timms)
    assert flat_ours.keys() == flat_timms.keys()
    for key in flat_ours:
        np.testing.assert_array_equal(flat_ours[key], flat_timms[key])


def test_cli_lists_every_problem(checkpoint, tmp_path, capsys):
    name = MODELS[0]
    state = torch.load(checkpoint(name), weights_only=True)["state_dict"]
    state["layers.1.blocks.0.attn.gate.weight"] = torch.zeros(4, 4)
    del state["layers.3.blocks.1.norm2.weight"]
    state["layers.2.downsample.reduction.weight"] = torch.zeros(384, 100)
    broken = save_checkpoint(state, tmp_path / "broken.safetensors")

    with pytest.raises(SystemExit) as exit_info:
        convert(name, broken, tmp_path / "out.safetensors", 3, 128)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {broken}")
    assert "1 unknown: layers.1.blocks.0.attn.gate.weight" in error
    assert "1 missing: params/layers_3/blocks_1/norm2/scale" in error
    assert "layers.2.downsample.reduction.weight: (100, 384)" in error
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet50"], "--model resnet50: not a supported timm SwinV2"),
        (["--model", MODELS[0], "--checkpoint", "nowhere.pth"], "--checkpoint nowhere.pth: no"),
        (["--model", MODELS[0], "--checkpoint", __file__], "unknown format"),
        (["--model", MODELS[0], "--in-chans", "0"], "--in-chans 0: must be at least 1"),
        (["--model", MODELS[0], "--img-size", "130"], "--img-size 130: must be a positive"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        timm_to_flax.main(argv + ["--out", str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["timm", "twin"])
@pytest.mark.parametrize("content", [b"a text file\nnot a checkpoint\n",
                                     np.random.default_rng(0).bytes(3000)], ids=["text", "random"])
def test_an_unreadable_pth_is_named(command, content, tmp_path, capsys):
    from jaxswin.convert import __main__ as convert_cli

    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    model = ["--model", MODELS[0]] if command == "timm" else ["--preset", "tiny"]
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main([command, *model, "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert f"--checkpoint {bad}: not a readable checkpoint" in error and "torch.save" in error
    assert not (tmp_path / "o").exists()


def _taken(tmp_path):
    """A file, a folder and a trained run's best/ folder in the way of --out."""
    (tmp_path / "file").write_text("a file of the user's")
    (tmp_path / "folder").mkdir()
    best = tmp_path / "best"
    best.mkdir()
    for name in ("model.safetensors", "config.toml", "stats.json"):
        (best / name).write_text(f"the trained run's {name}")
    return {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command, out, message", [
    ("timm", "folder", "folder: is a folder; give the file to write"),
    ("timm", "file/x.safetensors", "file is a file, not a folder; choose another --out"),
    ("timm", "file", "file: exists already; pass --overwrite"),
    ("twin", "file", "file is a file, not a folder; choose another --out"),
    ("twin", "file/x", "file is a file, not a folder"),
    ("twin", "best", "best/model.safetensors: exists already; pass --overwrite"),
])
def test_an_out_in_the_way_is_refused_before_any_work(command, out, message, tmp_path, capsys):
    from jaxswin.convert import __main__ as convert_cli

    before = _taken(tmp_path)
    model = ["--model", MODELS[0]] if command == "timm" else ["--preset", "tiny"]
    with pytest.raises(SystemExit) as exit_info:  # checked before the (missing) checkpoint
        convert_cli.main([command, *model, "--checkpoint", str(tmp_path / "none.pth"),
                          "--out", str(tmp_path / out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert f"error: --out {tmp_path / out}" in error and message in error, error
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_an_existing_out(checkpoint, tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_text("an earlier conversion")
    timm_to_flax.main(["--model", MODELS[0], "--checkpoint", str(checkpoint(MODELS[0])),
                       "--out", str(out), "--overwrite"])
    assert weights.metadata(out)["model"] == MODELS[0]


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fill_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "save_file", fill_the_disk)
    with pytest.raises(OSError):
        weights.save(tmp_path / "w.safetensors", {"a": np.zeros(3, np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_converting_is_named_with_the_fix(checkpoint, tmp_path, monkeypatch,
                                                           capsys):
    def fill_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "save_file", fill_the_disk)
    out = tmp_path / "out" / "w.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        convert(MODELS[0], checkpoint(MODELS[0]), out, 3, 128)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"cannot write the weights to {out}: No space left on device" in error
    assert "free some space or choose another --out" in error
    assert list(out.parent.iterdir()) == []


def test_script_and_module_entry_points_without_network(tmp_path):
    """Both ways of running the CLI work; with no network, timm's pretrained weights cannot be
    fetched and the error says to pass --checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = str(tmp_path / "out.safetensors")
    script = subprocess.run(
        [sys.executable, "convert/timm_to_flax.py", "--model", MODELS[0], "--out", out],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert script.returncode == 2, script.stderr
    assert "pass the weights file with --checkpoint" in script.stderr
    assert "Traceback" not in script.stderr
    module = subprocess.run(
        [sys.executable, "-m", "convert.timm_to_flax", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert module.returncode == 0, module.stderr
    assert "channel-mean" in module.stdout
