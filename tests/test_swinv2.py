"""The Flax SwinV2 module against timm at test size (swinv2_nano), and its pieces against numpy.

Full-size parity (SwinV2-T/S, converted with the CLI) is in test_convert.py.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin.models import swinv2
from jaxswin.models.swinv2 import CONFIGS, SwinV2

NANO = CONFIGS["swinv2_nano"]


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def timm_nano(img_size, in_chans=3, config=NANO):
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    return SwinTransformerV2(
        img_size=img_size,
        in_chans=in_chans,
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        pretrained_window_sizes=config.pretrained_window_sizes,
    ).eval()


def random_variables(module, seed=0):
    """Random variables of every shape the module has (not its init, which is slow to compile
    and whose zero res-post-norms leave the attention and MLP branches without gradient)."""
    x = jax.ShapeDtypeStruct((1, module.img_size, module.img_size, module.in_chans), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        matrix = leaf.ndim > 1 and "logit_scale" not in jax.tree_util.keystr(path)
        std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if matrix else 0.5
        return rng.normal(0, std, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_feature_maps_have_swin_strides_and_channels():
    module = SwinV2(NANO, in_chans=5, img_size=64)
    x = jax.ShapeDtypeStruct((2, 64, 64, 5), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    maps = jax.eval_shape(module.apply, variables, x)
    assert [m.shape for m in maps] == [
        (2, 64 // s, 64 // s, c) for s, c in zip((4, 8, 16, 32), swinv2.feature_channels(NANO))
    ]
    assert swinv2.feature_channels(CONFIGS["swinv2_small_window8_256"]) == (96, 192, 384, 768)
    with pytest.raises(ValueError, match="built for NHWC input"):
        jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((2, 5, 64, 64), jnp.float32))


@pytest.mark.parametrize("img_size", [64, 72, 128, 256])
def test_windows_shifts_tables_and_masks_match_timm(img_size):
    pytest.importorskip("timm")
    model = timm_nano(
        img_size, config=dataclasses.replace(NANO, pretrained_window_sizes=(4, 8, 8, 2)))
    sides = swinv2.stage_resolutions(NANO, img_size)
    for stage, side, pretrained in zip(model.layers, sides, (4, 8, 8, 2)):
        window, shift = swinv2.window_and_shift(side, NANO.window_size)
        for i, block in enumerate(stage.blocks):
            assert block.input_resolution == (side, side)
            assert block.window_size == (window, window)
            assert block.shift_size == ((shift, shift) if i % 2 else (0, 0))
            attn = block.attn
            np.testing.assert_allclose(
                swinv2.relative_coords_table(window, pretrained),
                attn.relative_coords_table.reshape(-1, 2).numpy(),
                rtol=1e-6,
            )
            np.testing.assert_array_equal(
                swinv2.relative_position_index(window), attn.relative_position_index.numpy()
            )
            if block.attn_mask is None:
                assert not (i % 2 and shift)
            else:
                padded = -(-side // window) * window
                np.testing.assert_array_equal(
                    swinv2.shift_mask(padded, window, shift), block.attn_mask.numpy()
                )


@pytest.mark.parametrize(
    "encoder, img_size, in_chans, pretrained_window_sizes",
    [
        # 72: maps 18/9/5/3, so windows are padded, PatchMerging pads odd maps, 2 stages clipped.
        ("swinv2_nano", 72, 3, (0, 0, 0, 0)),
        # Log-CPB scaled by pre-training windows other than the window in use.
        ("swinv2_nano", 128, 2, (4, 6, 8, 2)),
        # Six blocks in stage 3: shifted and unshifted blocks alternate past the second.
        ("swinv2_nano_deep", 64, 4, (0, 0, 0, 0)),
    ],
)
def test_nano_matches_timm(perturb_timm, encoder, img_size, in_chans, pretrained_window_sizes):
    pytest.importorskip("timm")
    import torch

    config = dataclasses.replace(CONFIGS[encoder], pretrained_window_sizes=pretrained_window_sizes)
    model = perturb_timm(timm_nano(img_size, in_chans, config), seed=img_size)
    images = np.random.default_rng().standard_normal((2, img_size, img_size, in_chans), np.float32)
    with torch.no_grad():
        expected = model.forward_intermediates(
            torch.from_numpy(images).permute(0, 3, 1, 2), intermediates_only=True
        )
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    variables = swinv2.timm_to_flax(state, config, in_chans)
    module = SwinV2(config, in_chans=in_chans, img_size=img_size)
    maps = jax.jit(module.apply)(variables, images)
    for got, want in zip(maps, expected):
        assert rel_l2(got, want.permute(0, 2, 3, 1).numpy()) <= 1e-5


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_gelu_is_the_exact_gelu_with_its_derivative(dtype, tol):
    x = np.random.default_rng().normal(0, 3, 4096)
    x = np.asarray(jnp.asarray(x, dtype), np.float64)  # the inputs as the dtype holds them
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    got = swinv2.gelu(jnp.asarray(x, dtype))
    slope = jax.vmap(jax.grad(swinv2.gelu))(jnp.asarray(x, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), x * cdf, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(slope, np.float64), cdf + x * pdf, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("offset", [0.0, 100.0])  # a large mean and small spread: DEM metres
def test_layer_norm_and_its_hand_written_gradient_match_torch(dtype, tol, offset):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng()
    x = np.asarray(jnp.asarray(offset + rng.normal(0, 0.5, (3, 5, 5, 48)), dtype), np.float64)
    scale, bias, dy = rng.normal(size=48), rng.normal(size=48), rng.normal(size=x.shape)
    ln = swinv2.LayerNorm(dtype=dtype)
    variables = {"params": {"scale": jnp.asarray(scale, jnp.float32),
                            "bias": jnp.asarray(bias, jnp.float32)}}
    y, vjp = jax.vjp(lambda v, x: ln.apply(v, x), variables, jnp.asarray(x, dtype))
    grads, dx = vjp(jnp.asarray(dy, dtype))

    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
    ty = torch.nn.functional.layer_norm(tx, (48,), ts, tb, eps=1e-5)  # float64
    ty.backward(torch.tensor(dy))
    assert y.dtype == dx.dtype == dtype and grads["params"]["scale"].dtype == jnp.float32
    for got, want in [(y, ty), (dx, tx.grad), (grads["params"]["scale"], ts.grad),
                      (grads["params"]["bias"], tb.grad)]:
        assert rel_l2(np.asarray(got, np.float64), want.detach().numpy()) <= tol


def test_timm_to_flax_skips_buffers_head_and_final_norm():
    pytest.importorskip("timm")
    model = timm_nano(64)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert any(k.startswith("head.") for k in state) and "norm.weight" in state
    # Older timm checkpoints still carry the shape buffers.
    block = model.layers[0].blocks[1]
    state["layers.0.blocks.1.attn_mask"] = block.attn_mask.numpy()
    state["layers.0.blocks.1.attn.relative_position_index"] = np.zeros((64, 64), np.int64)
    state["layers.0.blocks.1.attn.relative_coords_table"] = np.zeros((1, 15, 15, 2), np.float32)
    state["layers.0.blocks.1.attn.k_bias"] = np.zeros(32, np.float32)
    variables = swinv2.timm_to_flax(state, NANO, 3)
    attn = variables["params"]["layers_0"]["blocks_1"]["attn"]
    np.testing.assert_array_equal(
        attn["qkv"]["kernel"], state["layers.0.blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(
        attn["cpb_fc2"]["kernel"], state["layers.0.blocks.1.attn.cpb_mlp.2.weight"].T
    )
    np.testing.assert_array_equal(
        variables["params"]["patch_embed"]["proj"]["kernel"],
        state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
    )


def test_timm_to_flax_lists_every_problem():
    pytest.importorskip("timm")
    state = {k: v.numpy() for k, v in timm_nano(64).state_dict().items()}
    state["layers.0.blocks.0.attn.extra.weight"] = np.zeros((4, 4), np.float32)
    del state["layers.1.downsample.norm.bias"]
    state["layers.2.blocks.1.mlp.fc1.weight"] = np.zeros((3, 128), np.float32)
    with pytest.raises(swinv2.ConversionError) as err:
        swinv2.timm_to_flax(state, NANO, 3)
    message = str(err.value)
    assert "1 unknown: layers.0.blocks.0.attn.extra.weight" in message
    assert "1 missing: params/layers_1/downsample/norm/bias" in message
    assert "layers.2.blocks.1.mlp.fc1.weight: (128, 3)" in message


def test_timm_to_flax_summarises_a_checkpoint_of_another_architecture():
    """Weights of another model misfit by the hundred: counts and first names, not every name."""
    pytest.importorskip("timm")
    state = {k: v.numpy() for k, v in timm_nano(64).state_dict().items()}
    with pytest.raises(swinv2.ConversionError) as err:
        swinv2.timm_to_flax(state, swinv2.CONFIGS["swinv2_tiny_window8_256"], 3)
    message = str(err.value)
    expected = swinv2.variable_shapes(swinv2.CONFIGS["swinv2_tiny_window8_256"], 3)
    missing = len(expected) - len(
        {swinv2.flax_path(k, v.ndim) for k, v in state.items()} & expected.keys()
    )
    assert f"{missing} missing: " in message and "misshapen: " in message
    assert message.count("params/") <= 10 and "--model" in message  # 5 names a kind
    assert len(message) < 1500


@pytest.mark.parametrize("in_chans", [1, 2, 3, 4, 7])
def test_channel_rule(in_chans):
    rgb = np.random.default_rng().standard_normal((4, 4, 3, 8)).astype(np.float32)
    kernel = swinv2.adapt_in_chans(rgb, in_chans)
    assert kernel.shape == (4, 4, in_chans, 8)
    if in_chans >= 3:
        np.testing.assert_array_equal(kernel[:, :, :3], rgb)
        for extra in range(3, in_chans):
            np.testing.assert_allclose(kernel[:, :, extra], rgb.mean(axis=2), rtol=1e-6)
    else:
        # A grey image on every channel gets the response RGB weights give to it on R, G and B.
        grey = np.random.default_rng().standard_normal((4, 4))
        response = np.einsum("hw,hwco->o", grey, kernel)
        # The sums cancel: float32 rounding is bounded by the sum of the terms' magnitudes.
        magnitude = np.einsum("hw,hwco->o", np.abs(grey), np.abs(rgb))
        np.testing.assert_allclose(response, np.einsum("hw,hwco->o", grey, rgb), rtol=1e-5,
                                   atol=1e-6 * magnitude.max())
        np.testing.assert_array_equal(kernel[:, :, 0], kernel[:, :, -1])
    assert swinv2.adapt_in_chans(kernel, in_chans) is kernel  # already fits: kept
    assert swinv2.channel_rule(in_chans)


def test_channel_rule_adapts_only_rgb():
    with pytest.raises(swinv2.ConversionError, match="5-channel"):
        swinv2.adapt_in_chans(np.zeros((4, 4, 5, 8), np.float32), 4)


def test_stochastic_depth_per_sample_in_training_only():
    module = SwinV2(NANO, img_size=64, drop_path_rate=0.5)
    variables = random_variables(module, seed=0)
    image = np.random.default_rng().standard_normal((1, 64, 64, 3), np.float32)
    batch = np.repeat(image, 4, axis=0)
    apply = jax.jit(module.apply, static_argnames="train")

    evaluated = apply(variables, batch)
    undropped = jax.jit(module.clone(drop_path_rate=0.0).apply, static_argnames="train")(
        variables, batch, train=True
    )
    trained = apply(variables, batch, train=True, rngs={"dropout": jax.random.key(1)})
    for e, u in zip(evaluated, undropped):
        np.testing.assert_allclose(e, u, rtol=1e-5, atol=1e-5)
    # Identical images, different outputs: blocks are dropped per sample.
    last = np.asarray(trained[-1])
    assert any(not np.allclose(last[0], last[i]) for i in range(1, 4))
    assert not np.allclose(last, evaluated[-1])


def test_gradients_in_training_mode_are_finite_and_nonzero():
    # One shifted block (stage 1) is enough to reach every kind of parameter; fewer blocks
    # keep the backward pass quick to compile.
    config = dataclasses.replace(NANO, depths=(2, 1, 1, 1))
    module = SwinV2(config, img_size=64, drop_path_rate=0.1, stage_attention="se")
    variables = random_variables(module, seed=2)
    images = np.random.default_rng().standard_normal((4, 64, 64, 3), np.float32)

    def loss(params):
        maps = module.apply(
            {"params": params}, images, train=True, rngs={"dropout": jax.random.key(3)}
        )
        return sum(jnp.mean(jnp.square(m)) for m in maps)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(grad)), name
        assert np.any(grad != 0), name


def test_bf16_compute_keeps_float32_params():
    module = SwinV2(NANO, img_size=64, dtype=jnp.bfloat16)
    variables = random_variables(module, seed=4)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    images = np.random.default_rng().standard_normal((2, 64, 64, 3), np.float32)
    low = jax.jit(module.apply)(variables, images)
    full = jax.jit(module.clone(dtype=jnp.float32).apply)(variables, images)
    for lo, hi in zip(low, full):
        assert lo.dtype == jnp.bfloat16
        assert rel_l2(lo, hi) <= 2e-2


def test_load_rejects_foreign_files(tmp_path):
    from jaxswin import weights
    from jaxswin.errors import UserError

    path = tmp_path / "other.safetensors"
    weights.save(path, {"params": {"w": np.zeros(3, np.float32)}}, {"model": "resnet50"})
    with pytest.raises(UserError, match="jaxswin-convert timm"):
        swinv2.load(path)
    # A trained model's file carries its whole config: the message names it, not its text.
    config_text = "[model]\n" + "encoder = 'swinv2_small_window8_256'\n" * 50
    weights.save(path, {"params": {"w": np.zeros(3, np.float32)}}, {"config": config_text})
    with pytest.raises(UserError, match="for jaxswin.predict") as error:
        swinv2.load(path)
    assert "encoder =" not in str(error.value) and len(str(error.value)) < 400
    meta = {"model": "swinv2_nano", "in_chans": "3", "img_size": "64"}
    weights.save(path, {"params": {"w": np.zeros(3, np.float32)}}, meta)
    expected = len(swinv2.variable_shapes(swinv2.CONFIGS["swinv2_nano"], 3))
    with pytest.raises(swinv2.ConversionError, match=f"1 unexpected: params/w; {expected} missing"):
        swinv2.load(path)
