"""train.decay_mask = "timm": which parameters AdamW decays, against timm's own rule on a timm
SwinV2 (param_groups_weight_decay with the model's no_weight_decay()), and in an optax step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import config as config_lib
from jaxswin import models, weights
from jaxswin.errors import ConfigError
from jaxswin.models import swinv2
from jaxswin.train import create_state, decay_mask


def flat_mask(params, rule):
    return {"/".join(k.key for k in path): bool(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(decay_mask(params, rule))[0]}


@pytest.mark.torch
@pytest.mark.parametrize("name", ["swinv2_tiny_window8_256", "swinv2_small_window16_256"])
def test_timm_rule_matches_timms_param_groups(name):
    timm = pytest.importorskip("timm")
    pytest.importorskip("torch")
    from timm.optim import param_groups_weight_decay

    model = timm.create_model(name, pretrained=False, device="meta")
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    timm_decays = {n: id(p) not in undecayed for n, p in model.named_parameters()}

    config = swinv2.CONFIGS[name]
    module = swinv2.SwinV2(config, in_chans=3, img_size=256)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
    ours = flat_mask(shapes["params"], "timm")

    compared = 0
    for torch_name, decays in timm_decays.items():
        if swinv2.TIMM_CLASSIFIER.match(torch_name):  # head and final norm: not in jaxswin
            continue
        ndim = len(dict(model.named_parameters())[torch_name].shape)
        path = "/".join(swinv2.flax_path(torch_name, ndim)[1:])
        assert ours[path] == decays, (torch_name, path)
        compared += 1
    assert compared == len(ours)  # every jaxswin parameter had its timm counterpart
    assert 0 < sum(ours.values()) < len(ours)


def test_whole_model_mask_spares_vectors_logit_scales_and_the_cpb_mlp():
    cfg = config_lib.load("tiny", ["model.fusion=weighted_sum", "model.decoder=fpn"]).model
    module = models.build(cfg)
    shapes = jax.eval_shape(lambda: models.init(module, cfg, jax.random.key(0)))
    mask = flat_mask(shapes["params"], "timm")
    leaves = weights.flatten(jax.tree.map(lambda s: np.empty(s.shape, np.int8), shapes["params"]))
    for name, leaf in leaves.items():
        spared = leaf.ndim <= 1 or "logit_scale" in name or "/cpb_" in name
        assert mask[name] == (not spared), name
    assert any("cpb_fc1/kernel" in n and not m for n, m in mask.items())
    assert decay_mask(shapes["params"], "none") is None


def test_masked_parameters_are_not_decayed_by_a_step():
    """Zero gradients: AdamW's update is then -lr * weight_decay * param exactly where decayed."""
    cfg = config_lib.load("tiny", ["model.img_size=32"])
    tcfg = dataclasses.replace(cfg.train, warmup_epochs=0.0, weight_decay=0.1, lr=0.5,
                               decay_mask="timm")
    module = models.build(cfg.model)
    variables = models.init(module, cfg.model, jax.random.key(1))
    # Random values everywhere, so that no parameter starts at zero (where decay is invisible).
    rng = np.random.default_rng(2)
    variables["params"] = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), variables["params"])
    state = create_state(module, variables, tcfg, steps_per_epoch=4, precision="fp32")
    stepped = state.apply_gradients(grads=jax.tree.map(jnp.zeros_like, state.params),
                                    batch_stats=state.batch_stats)
    mask = flat_mask(state.params, "timm")
    before, after = weights.flatten(state.params), weights.flatten(stepped.params)
    for name, value in before.items():
        expected = value * (1 - 0.5 * 0.1) if mask[name] else value
        np.testing.assert_allclose(after[name], expected, rtol=1e-6, err_msg=name)


def test_unknown_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="train.decay_mask"):
        decay_mask({"w": jnp.zeros((2, 2))}, "all")
