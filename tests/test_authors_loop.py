"""Trajectory parity: jaxswin's train_step under the `paper` recipe follows the authors' loop
(experiments/authors_loop.py, PyTorch, on the twin) step for step: a nano model at 64 px, the
same initial weights (via the twin converter), the same fixed batches, no augmentation, no
dropout, float32, 50 steps across the end of the warm-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from convert import twin_to_flax as converter  # noqa: E402
from experiments import authors_loop  # noqa: E402
from experiments.torch_twin import DualSwinFusionSeg  # noqa: E402
from jaxswin import config, models, weights  # noqa: E402
from jaxswin.train import create_state, make_train_step  # noqa: E402

pytestmark = pytest.mark.torch

SIZE, BATCH, STEPS_PER_EPOCH, EPOCHS = 64, 2, 10, 5  # warm-up: 3 epochs = 30 of the 50 steps
POS_WEIGHT = 1.8


def relative_l2(ours: dict, theirs: dict) -> float:
    keys = sorted(theirs)
    a = np.concatenate([np.ravel(ours[k]) for k in keys])
    b = np.concatenate([np.ravel(theirs[k]) for k in keys])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def flat_params(variables: dict) -> dict:
    return weights.flatten(jax.device_get(variables["params"]))


@pytest.fixture(scope="module")
def run():
    cfg = config.load("tiny", [
        f"model.img_size={SIZE}", "model.decoder_channels=16", "model.dropout=0.0",
        "model.drop_path_rate=0.0", f"train.epochs={EPOCHS}", "train.warmup_epochs=3.0",
        f"train.batch_size={BATCH}", "train.precision=\"fp32\"", "train.lr=1e-3",
    ])
    assert cfg.train.ema_warmup_mean and not cfg.train.ema_batch_stats  # the authors' recipe
    assert cfg.train.dice == "per_tile" and cfg.train.lr_floor == 0.05
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS_PER_EPOCH):
        rgb = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
        aux = rng.normal(size=(BATCH, SIZE, SIZE, 4)).astype(np.float32)
        blob = rng.normal(size=(BATCH, 8, 8)).repeat(8, 1).repeat(8, 2)
        batches.append({"rgb": rgb, "aux": aux, "mask": (blob > 0.3)[..., None].astype(np.float32)})

    torch.manual_seed(0)
    twin = DualSwinFusionSeg.from_config(cfg.model)
    # Copies: .numpy() views the tensors, which the authors' loop then trains in place.
    initial = converter.twin_to_flax({k: v.numpy().copy() for k, v in twin.state_dict().items()},
                                     cfg.model)
    nchw = [tuple(torch.from_numpy(b[k].transpose(0, 3, 1, 2).copy())
                  for k in ("rgb", "aux", "mask")) for b in batches]
    total = EPOCHS * STEPS_PER_EPOCH
    their_losses, ema = authors_loop.train(
        twin, nchw * EPOCHS, pos_weight=POS_WEIGHT, lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay, warmup_steps=3 * STEPS_PER_EPOCH, total_steps=total,
        ema_decay=cfg.train.ema_decay)

    def converted(state_dict):
        return converter.twin_to_flax({k: v.detach().numpy() for k, v in state_dict.items()},
                                      cfg.model)

    module = models.build(cfg.model)
    state = create_state(module, jax.tree.map(jnp.asarray, initial), cfg.train, STEPS_PER_EPOCH,
                         "fp32")
    step = make_train_step(cfg.train, STEPS_PER_EPOCH)
    our_losses = []
    for n in range(total):
        state, out = step(state, batches[n % STEPS_PER_EPOCH], jnp.float32(POS_WEIGHT),
                          jax.random.key(0))
        our_losses.append(float(out["loss"]))
    return {
        "losses": (np.array(our_losses), np.array(their_losses)),
        "initial": flat_params(initial),
        "raw": (flat_params({"params": state.params}), flat_params(converted(twin.state_dict()))),
        "ema": (flat_params({"params": state.ema_params}),
                flat_params(converted(ema.state_dict(twin)))),
    }


def test_step_losses_match(run):
    ours, theirs = run["losses"]
    assert len(ours) == len(theirs) == 50
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert theirs[-10:].mean() < theirs[:10].mean()  # it trained


@pytest.mark.parametrize("kind", ["raw", "ema"])
def test_final_weights_match(run, kind):
    ours, theirs = run[kind]
    assert relative_l2(ours, theirs) <= 1e-4
    # The weights moved far more than they differ: the comparison is not of two initial states.
    moved = relative_l2(run["initial"], theirs)
    assert moved > 100 * relative_l2(ours, theirs)
