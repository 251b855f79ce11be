"""The PyTorch twin (experiments/torch_twin.py), converted by convert/twin_to_flax.py, computes
what our Flax model computes."""

import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from convert import twin_to_flax as converter  # noqa: E402
from experiments.torch_twin import DualSwinFusionSeg  # noqa: E402
from jaxswin import config, models, weights  # noqa: E402

pytestmark = pytest.mark.torch

SIZE = 64  # the tiny preset's nano encoders at 64 px: stages 16, 8, 4, 2 (windows 8, 8, 4, 2)


@pytest.fixture(scope="module")
def model_cfg():
    return dataclasses.replace(config.load("tiny").model, img_size=SIZE)


@pytest.fixture(scope="module")
def twin(model_cfg, perturb_timm):
    """The twin in eval mode with every weight and BatchNorm statistic away from its init."""
    torch.manual_seed(0)
    model = perturb_timm(DualSwinFusionSeg.from_config(model_cfg), seed=1).eval()
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.tensor(rng.normal(0, 0.5, shape)))
                module.running_var.copy_(torch.tensor(rng.uniform(0.3, 3.0, shape)))
    return model


def state_arrays(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_converted_twin_gives_the_same_logits(model_cfg, twin):
    variables = converter.twin_to_flax(state_arrays(twin), model_cfg)
    rng = np.random.default_rng(3)
    rgb = rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    aux = rng.normal(size=(2, SIZE, SIZE, 4)).astype(np.float32)
    module = models.build(model_cfg)
    ours = np.asarray(jax.jit(module.apply)(variables, rgb, aux))
    with torch.no_grad():
        theirs = twin(*(torch.from_numpy(x.transpose(0, 3, 1, 2)) for x in (rgb, aux)))
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (2, SIZE, SIZE, 1)
    assert theirs.std() > 0.01
    assert relative_l2(ours, theirs) <= 1e-4
    # The logits share a large offset (the head bias); the spatial pattern must match as well.
    assert relative_l2(ours - ours.mean(), theirs - theirs.mean()) <= 1e-4


def relative_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_twin_has_the_flax_parameter_count():
    """Full size, no weights materialised on the Flax side: both are the paper's ~113 M model."""
    cfg = config.load("paper").model
    with torch.device("meta"):
        twin = DualSwinFusionSeg.from_config(cfg)
    shapes = jax.eval_shape(lambda: models.init(models.build(cfg), cfg, jax.random.key(0)))
    flax_count = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
    assert sum(p.numel() for p in twin.parameters()) == flax_count


def test_cli_writes_a_run_folder(model_cfg, twin, tmp_path):
    checkpoint = tmp_path / "twin.pth"
    torch.save(twin.state_dict(), checkpoint)
    converter.main(
        ["--checkpoint", str(checkpoint), "--preset", "tiny", "--set", f"model.img_size={SIZE}",
         "--out", str(tmp_path / "run")]
    )
    written, _ = weights.load(tmp_path / "run" / "model.safetensors")
    expected = converter.twin_to_flax(state_arrays(twin), model_cfg)
    flat_written, flat_expected = weights.flatten(written), weights.flatten(expected)
    assert flat_written.keys() == flat_expected.keys()
    assert all(np.array_equal(flat_written[k], flat_expected[k]) for k in flat_expected)
    assert config.load(str(tmp_path / "run" / "config.toml")).model == model_cfg


def test_cli_refuses_a_variant_the_twin_lacks(tmp_path, capsys):
    checkpoint = tmp_path / "twin.pth"
    torch.save({}, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        converter.main(
            ["--checkpoint", str(checkpoint), "--preset", "tiny", "--set", "model.decoder=fpn",
             "--out", str(tmp_path / "run")]
        )
    assert exit_info.value.code == 2
    assert "decoder" in capsys.readouterr().err
