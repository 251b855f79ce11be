"""The pure pieces of training, on a toy model: schedule, EMA, fp16 loss scaling, eval counts."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import config as config_lib
from jaxswin import losses, metrics
from jaxswin.train import create_state, make_eval_step, make_schedule, make_train_step


class ToySegmenter(nn.Module):
    """Same calling convention as the real model, small enough to step in milliseconds."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        x = jnp.concatenate([rgb, aux], axis=-1).astype(self.dtype)
        x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return nn.Conv(1, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)


class KinkedSegmenter(ToySegmenter):
    """The toy model plus 0·sqrt(k) at k = 0: the loss stays finite, k's gradient is NaN."""

    @nn.compact
    def __call__(self, rgb, aux, train: bool = False):
        kink = self.param("kink", nn.initializers.zeros, ())
        return super().__call__(rgb, aux, train) + 0.0 * jnp.sqrt(kink)


def toy_batch(rng, batch=4, size=16):
    rgb = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    aux = rng.normal(size=(batch, size, size, 4)).astype(np.float32)
    mask = (rng.random((batch, size, size, 1)) < 0.35).astype(np.float32)
    return {"rgb": rgb, "aux": aux, "mask": mask}


def toy_state(tcfg, precision="fp32", steps_per_epoch=5, seed=0, model=ToySegmenter):
    module = model(dtype=jnp.float16 if precision == "fp16" else jnp.float32)
    batch = toy_batch(np.random.default_rng(seed))
    variables = module.init(jax.random.key(seed), batch["rgb"], batch["aux"])
    return create_state(module, variables, tcfg, steps_per_epoch, precision)


@functools.cache  # one compiled step per config and precision, shared by the tests
def make_step(tcfg, steps_per_epoch=5):
    """The training step as train_fold runs it (jitted, sharded, donating its input state)."""
    return make_train_step(tcfg, steps_per_epoch)


def snapshot(state):
    """A copy of the state that outlives the donated original."""
    return jax.tree.map(jnp.copy, state)


def test_schedule_is_linear_warmup_then_cosine():
    tcfg = config_lib.TrainConfig(epochs=10, lr=2e-4, warmup_epochs=3.0)
    steps_per_epoch = 7
    schedule = make_schedule(tcfg, steps_per_epoch)
    warmup, total = 21, 70
    for step in range(total + 1):
        if step < warmup:
            expected = tcfg.lr * step / warmup
        else:
            expected = 0.5 * tcfg.lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-6 * tcfg.lr), step
    assert float(schedule(warmup)) == pytest.approx(tcfg.lr)


def test_ema_follows_its_formula_and_step_logs_lr():
    tcfg = config_lib.TrainConfig(epochs=2, ema_decay=0.9)
    state = toy_state(tcfg)
    step = make_step(tcfg)
    rng = np.random.default_rng(1)
    key = jax.random.key(3)
    for _ in range(3):
        previous = snapshot(state)
        state, out = step(state, toy_batch(rng), jnp.float32(1.8), key)
        expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, previous.ema_params, state.params)
        for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        stats_expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, previous.ema_batch_stats,
                                      state.batch_stats)
        for got, want in zip(jax.tree.leaves(state.ema_batch_stats), jax.tree.leaves(stats_expected)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert float(out["lr"]) == pytest.approx(float(make_schedule(tcfg, 5)(previous.step)))
        assert np.isfinite(float(out["loss"]))
    assert int(state.step) == 3


def test_loss_of_step_is_the_named_loss():
    tcfg = config_lib.TrainConfig(loss="bce_w_dice", ema=False)
    state = toy_state(tcfg)
    batch = toy_batch(np.random.default_rng(2))
    key = jax.random.key(0)
    _, out = make_step(tcfg)(snapshot(state), batch, jnp.float32(2.0), key)
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["rgb"], batch["aux"],
        train=True, rngs={"dropout": jax.random.fold_in(key, 0)}, mutable=["batch_stats"])
    expected = losses.get("bce_w_dice")(logits, batch["mask"], 2.0)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_fp16_step_skips_an_overflow_and_lowers_the_scale():
    tcfg = config_lib.TrainConfig(ema_decay=0.5)
    state = toy_state(tcfg, precision="fp16")
    step = make_step(tcfg)
    rng = np.random.default_rng(4)
    key = jax.random.key(0)
    # Inject an overflow: a loss scale this large makes the scaled fp32 loss infinite.
    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(3e38)))
    before = snapshot(state)
    state, out = step(state, toy_batch(rng), jnp.float32(1.0), key)
    assert not bool(out["finite"])
    assert float(state.dynamic_scale.scale) == pytest.approx(1.5e38)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(before.params)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(before.ema_params)):
        np.testing.assert_array_equal(got, want)
    # It recovers: the scale keeps halving until steps are finite again, then weights move.
    finite_steps = 0
    for _ in range(140):
        state, out = step(state, toy_batch(rng), jnp.float32(1.0), key)
        finite_steps += bool(out["finite"])
        if finite_steps >= 2:
            break
    assert finite_steps >= 2
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.params), jax.tree.leaves(before.params)))


def test_eval_step_counts_match_numpy_and_ignore_padding():
    tcfg = config_lib.TrainConfig()
    state = toy_state(tcfg)
    batch = toy_batch(np.random.default_rng(5), batch=6)
    batch["weight"] = np.array([1, 1, 1, 1, 0, 0], np.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = make_eval_step(state.apply_fn, "bce")(variables, batch, jnp.float32(1.0),
                                                 jnp.float32(0.51))
    logits = np.asarray(state.apply_fn(variables, batch["rgb"], batch["aux"]))
    pred = (1 / (1 + np.exp(-logits)) > 0.51)[:4]
    truth = batch["mask"][:4] > 0.5
    expected = [np.sum(pred & truth), np.sum(pred & ~truth), np.sum(~pred & truth),
                np.sum(~pred & ~truth)]
    np.testing.assert_array_equal(np.asarray(out["counts"]), expected)
    assert float(out["tiles"]) == 4
    per_tile = [float(losses.get("bce")(logits[i:i + 1], batch["mask"][i:i + 1], 1.0))
                for i in range(4)]
    assert float(out["loss_sum"]) == pytest.approx(sum(per_tile), rel=1e-5)
    assert metrics.summarize(np.asarray(out["counts"]))["miou"] <= 1.0


def poisoned(batch, where="rgb"):
    batch = dict(batch)
    batch[where] = batch[where].copy()
    batch[where][0, 0, 0, 0] = np.nan
    return batch


def assert_untouched(after, before):
    """Params, optimiser moments and count, BN statistics, EMA and loss scale: all as before."""
    for name in ("params", "opt_state", "batch_stats", "ema_params", "ema_batch_stats",
                 "dynamic_scale"):
        for got, want in zip(jax.tree.leaves(getattr(after, name)),
                             jax.tree.leaves(getattr(before, name))):
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_nan_batch_is_reported_and_changes_nothing(precision):
    tcfg = config_lib.TrainConfig(ema_decay=0.5)
    step = make_step(tcfg)
    rng = np.random.default_rng(6)
    key = jax.random.key(0)
    state, out = step(toy_state(tcfg, precision), toy_batch(rng), jnp.float32(1.0), key)
    assert bool(out["finite"]) and not bool(out["nonfinite"])
    before = jax.device_get(state)
    state, out = step(state, poisoned(toy_batch(rng)), jnp.float32(1.0), key)
    assert not bool(out["finite"]) and bool(out["nonfinite"])
    after = jax.device_get(state)
    assert_untouched(after, before)
    assert int(after.step) == int(before.step) + 1  # the data and dropout stream move on
    # The next clean batch trains again from the untouched state.
    state, out = step(state, toy_batch(rng), jnp.float32(1.0), key)
    assert bool(out["finite"])
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))


def test_a_nonfinite_gradient_under_a_finite_loss_changes_nothing_but_the_step():
    tcfg = config_lib.TrainConfig(ema_decay=0.5)
    state = toy_state(tcfg, model=KinkedSegmenter)
    before = jax.device_get(state)
    state, out = make_step(tcfg)(state, toy_batch(np.random.default_rng(8)), jnp.float32(1.0),
                                 jax.random.key(0))
    assert math.isfinite(float(out["loss"])) and math.isnan(float(out["grad_norm"]))
    assert not bool(out["finite"]) and bool(out["nonfinite"])
    after = jax.device_get(state)
    assert_untouched(after, before)
    assert int(after.step) == int(before.step) + 1


def test_fp16_overflow_is_a_scale_event_not_divergence_until_the_scale_bottoms_out():
    tcfg = config_lib.TrainConfig(ema_decay=0.5)
    step = make_step(tcfg)
    rng = np.random.default_rng(7)
    key = jax.random.key(0)
    state = toy_state(tcfg, precision="fp16")
    # A scale large enough to overflow the fp16 backward pass, with a finite fp32 loss.
    state = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(1e30)))
    state, out = step(state, toy_batch(rng), jnp.float32(1.0), key)
    assert not bool(out["finite"]) and not bool(out["nonfinite"])
    assert float(state.dynamic_scale.scale) == pytest.approx(5e29)
    assert state.dynamic_scale.minimum_scale == 1.0  # the floor of create_state
    # At the floor, an overflow can no longer be scaled away: that is divergence.
    floored = state.dynamic_scale.replace(scale=jnp.float32(1e30), minimum_scale=1e30)
    state, out = step(state.replace(dynamic_scale=floored), toy_batch(rng), jnp.float32(1.0), key)
    assert not bool(out["finite"]) and bool(out["nonfinite"])
    assert float(state.dynamic_scale.scale) == pytest.approx(1e30)
