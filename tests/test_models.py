"""DualSwinFusionSeg and its ablation variants (jaxswin.models).

Parameter counts are checked against the paper, timm and closed-form counts; attention blocks,
resizing and pooling against timm/torch; every variant runs forward and backward on the nano
encoder; a converted timm checkpoint lands in both encoders (features compared with timm's).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import config, models, weights
from jaxswin.errors import ConfigError
from jaxswin.models import attention, fusion, layers, swinv2
from jaxswin.models.__main__ import main as models_main
from jaxswin.models.decoders import DECODERS
from jaxswin.models.__main__ import parameter_counts as count_parameters

SIZE = 64  # nano encoders at 64 px: stages 16, 8, 4, 2
PAPER = config.load("paper").model
PAPER_CHANNELS = (96, 192, 384, 768)
SWIN_T = "swinv2_tiny_window8_256"


@functools.lru_cache(maxsize=None)
def parameter_counts(model_cfg: config.ModelConfig) -> dict[str, int]:
    return count_parameters(model_cfg)  # traced once per config: the paper's is reused a lot


def tiny(**changes) -> config.ModelConfig:
    return dataclasses.replace(config.load("tiny").model, img_size=SIZE, **changes)


def full(**changes) -> config.ModelConfig:
    return dataclasses.replace(PAPER, **changes)


def relative_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def timm_feature_params(name: str, in_chans: int) -> int:
    """Parameters of timm's features_only SwinV2 (built on the meta device: no memory)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        net = timm.create_model(
            name, features_only=True, out_indices=(0, 1, 2, 3), img_size=128, in_chans=in_chans
        )
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------- parameter counts


def conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout  # bias-free conv, BN scale and bias


def unetpp_and_head_params(in_channels, c):
    """§3.4: 1x1 projections, nodes x^{i,j} (i+j <= 3, j >= 1) of two 3x3 convs over (j+1)*C
    inputs, the 3x3 refine conv and the 1x1 head with bias."""
    depth = len(in_channels)
    projections = sum(conv_bn(ci, c, 1) for ci in in_channels)
    nodes = sum(
        conv_bn((j + 1) * c, c, 3) + conv_bn(c, c, 3)
        for j in range(1, depth)
        for _ in range(depth - j)
    )
    return projections + nodes + conv_bn(c, c, 3) + c + 1


def test_paper_model_has_the_papers_parameter_counts():
    counts = parameter_counts(PAPER)
    assert counts["rgb_encoder"] == 48_957_882  # timm's features_only swinv2_small at 128 px
    assert counts["aux_encoder"] == 48_957_882 + 96 * 4 * 4  # one more patch-embedding channel
    assert counts["fusion"] == sum(2 * c * c + c for c in PAPER_CHANNELS)  # 1x1 convs 2C -> C
    assert round(counts["fusion"] / 1e6, 2) == 1.57
    decoder = counts["decoder"] + counts["head"]
    assert decoder == unetpp_and_head_params(PAPER_CHANNELS, 256)
    assert round(decoder / 1e6, 1) == 13.9
    assert set(counts) == {"rgb_encoder", "aux_encoder", "fusion", "decoder", "head"}
    assert abs(sum(counts.values()) - 113e6) / 113e6 < 0.01


def test_encoders_have_timms_parameter_counts():
    aux_encoder = parameter_counts(PAPER)["aux_encoder"]
    assert aux_encoder == timm_feature_params("swinv2_small_window8_256", 4)
    single = parameter_counts(
        full(arch="single", encoder=SWIN_T, decoder="fpn", bands=("red", "green", "blue", "dem"))
    )
    assert single["encoder"] == timm_feature_params(SWIN_T, 4)


# Every ablation of §4.4 at full width: (overrides, check of its parameter counts against the
# `base` counts of the paper model with Swin-T encoders, which are cheaper to trace and have the
# same channels).
VARIANTS = {
    "weighted_sum": (dict(fusion="weighted_sum"), lambda c, base: c["fusion"] == 4),
    "eca_gated": (dict(fusion="eca"), lambda c, base: 0 < c["fusion"] - base["fusion"] < 100),
    "se_gated": (dict(fusion="se"), lambda c, base: c["fusion"] > base["fusion"] + 10_000),
    "cbam_gated": (dict(fusion="cbam"), lambda c, base: c["fusion"] > base["fusion"] + 10_000),
    "fpn": (dict(decoder="fpn"), lambda c, base: c["decoder"] < base["decoder"]),
    "upernet": (dict(decoder="upernet"), lambda c, base: c["decoder"] > 0),
    "segformer": (dict(decoder="segformer"), lambda c, base: c["decoder"] > 0),
    "deeplabv3plus": (dict(decoder="deeplabv3plus"), lambda c, base: c["decoder"] > 0),
    "hybrid": (
        dict(decoder="hybrid"),
        lambda c, base: c["decoder"] > base["decoder"] + 256 * 256 * 4,  # + SegFormer and fuse
    ),
    "deep_supervision": (
        dict(deep_supervision=True),
        lambda c, base: c["head"] == base["head"] + 2 * (256 + 1),  # side heads on x01, x02
    ),
    "attention_ia_ie_do": (
        dict(input_attention="eca", encoder_attention="se", decoder_attention="cbam"),
        lambda c, base: {"rgb_input_attention", "aux_input_attention"} <= set(c)
        and c["rgb_encoder"] > base["rgb_encoder"]
        and c["head"] > base["head"],
    ),
    "late": (
        dict(arch="late"),
        lambda c, base: c["rgb_decoder"] == c["aux_decoder"] == base["decoder"]
        and c["blend_logit"] == 1
        and "fusion" not in c,
    ),
    "single_all7": (
        dict(arch="single", decoder="fpn"),
        lambda c, base: set(c) == {"encoder", "decoder", "head"}
        and c["encoder"] == base["rgb_encoder"] + 96 * 4 * 4 * 4,  # 7 input channels
    ),
    "dual_small": (
        dict(encoder="swinv2_small_window8_256"),
        lambda c, base: c["rgb_encoder"] > base["rgb_encoder"],
    ),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_builds_at_full_size(name):
    overrides, check = VARIANTS[name]
    counts = parameter_counts(full(**{"encoder": SWIN_T, **overrides}))
    assert all(n > 0 for n in counts.values())
    assert check(counts, parameter_counts(full(encoder=SWIN_T)))


def test_summary_prints_the_breakdown_and_total_last(capsys):
    models_main(["summary", "--preset", "tiny", "--set", "model.arch=late"])
    lines = capsys.readouterr().out.strip().splitlines()
    counts = parameter_counts(config.load("tiny", ["model.arch=late"]).model)
    assert lines[-1] == f"total {sum(counts.values()):,} parameters"
    parts = ["rgb_encoder", "aux_encoder", "rgb_decoder", "aux_decoder", "rgb_head", "aux_head"]
    assert [line.split()[0] for line in lines[1:-1]] == parts + ["blend_logit"]


def test_summary_reports_bad_options_as_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        models_main(["summary", "--set", "model.fusion=sum"])
    assert exit_info.value.code == 2
    assert "model.fusion" in capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(arch="early"), "model.arch"),
        (dict(encoder="swinv2_huge"), "model.encoder"),
        (dict(fusion="sum"), "model.fusion"),
        (dict(decoder="unet"), "model.decoder"),
        (dict(input_attention="gc"), "model.input_attention"),
        (dict(encoder_attention="gc"), "model.encoder_attention"),
        (dict(decoder_attention="gc"), "model.decoder_attention"),
        (dict(arch="single", bands=("red", "nir")), "model.bands"),
        (dict(arch="single", bands=("red", "red")), "model.bands"),
        (dict(bands=("red",)), "model.bands"),
        (dict(decoder="fpn", deep_supervision=True), "model.deep_supervision"),
        (dict(img_size=130), "model.img_size"),
        (dict(dropout=1.0), "model.dropout"),
    ],
)
def test_bad_model_fields_are_config_errors_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        models.build(full(**changes))


def test_create_rejects_unknown_overrides():
    with pytest.raises(ConfigError, match="decoder_width"):
        models.create("tiny", decoder_width=8)


def test_reduced_precision_keeps_float32_params_and_logits():
    cfg = tiny()
    module = models.build(cfg, jnp.bfloat16)
    variables = jax.eval_shape(lambda: models.init(module, cfg, jax.random.key(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    rgb = jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32)
    aux = jax.ShapeDtypeStruct((2, SIZE, SIZE, 4), jnp.float32)
    logits = jax.eval_shape(module.apply, variables, rgb, aux)
    assert logits.shape == (2, SIZE, SIZE, 1) and logits.dtype == jnp.float32


# ---------------------------------------------------------------------------- torch references


@pytest.mark.parametrize("kind", ["eca", "se", "cbam"])
@pytest.mark.parametrize("channels", [4, 96])
def test_attention_blocks_match_timm(kind, channels):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    from timm.layers.squeeze_excite import SEModule

    torch.manual_seed(channels)
    reference = {"eca": EcaModule, "se": SEModule, "cbam": CbamModule}[kind]
    block = reference(channels).eval()
    with torch.no_grad():
        for name, tensor in block.state_dict().items():
            if tensor.is_floating_point():
                low = 0.5 if "running_var" in name else -1.0
                tensor.uniform_(low, 2.0)
    sd = {k: v.numpy() for k, v in block.state_dict().items()}
    dense = lambda w: w[:, :, 0, 0].T  # noqa: E731  1x1 conv (out, in, 1, 1) -> (in, out)
    if kind == "eca":
        variables = {"params": {"conv": {"kernel": sd["conv.weight"][0, 0][:, None, None]}}}
    elif kind == "se":
        variables = {"params": {
            "fc1": {"kernel": dense(sd["fc1.weight"]), "bias": sd["fc1.bias"]},
            "fc2": {"kernel": dense(sd["fc2.weight"]), "bias": sd["fc2.bias"]},
        }}
    else:
        variables = {
            "params": {
                "fc1": {"kernel": dense(sd["channel.fc1.weight"])},
                "fc2": {"kernel": dense(sd["channel.fc2.weight"])},
                "spatial_conv": {"kernel": sd["spatial.conv.conv.weight"].transpose(2, 3, 1, 0)},
                "spatial_bn": {
                    "scale": sd["spatial.conv.bn.weight"], "bias": sd["spatial.conv.bn.bias"]
                },
            },
            "batch_stats": {
                "spatial_bn": {
                    "mean": sd["spatial.conv.bn.running_mean"],
                    "var": sd["spatial.conv.bn.running_var"],
                }
            },
        }
    x = np.random.default_rng(channels).normal(size=(2, 9, 7, channels)).astype(np.float32)
    ours = attention.channel_attention(kind).apply(variables, x)
    with torch.no_grad():
        theirs = block(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == x.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours, x, atol=1e-3)  # the gate did something


def test_unknown_attention_is_a_config_error():
    assert attention.channel_attention("none") is None
    with pytest.raises(ConfigError, match="eca"):
        attention.channel_attention("gc")


@pytest.mark.parametrize(
    "source, target",
    [((4, 4), (8, 8)), ((4, 5), (32, 40)), ((1, 1), (4, 4)), ((6, 6), (4, 4)), ((7, 5), (3, 4))],
)
def test_bilinear_resize_matches_torch_interpolate(source, target):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, *source, 3)).astype(np.float32)
    ours = layers.resize_bilinear(jnp.asarray(x), target)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size=target, mode="bilinear", align_corners=False
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "source, size", [((4, 4), 1), ((4, 4), 3), ((4, 4), 6), ((7, 5), 3), ((8, 8), 2)]
)
def test_adaptive_avg_pool_matches_torch(source, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, *source, 3)).astype(np.float32)
    ours = layers.adaptive_avg_pool(jnp.asarray(x), size)
    theirs = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- forward and backward


def random_inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.normal(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    aux = rng.normal(size=(batch, SIZE, SIZE, 4)).astype(np.float32)
    mask = (rng.uniform(size=(batch, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
    return rgb, aux, mask


def flat_shapes(tree) -> dict[str, tuple]:
    """{'params/a/b': shape} of a tree of arrays or shape structs."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): leaf.shape for path, leaf in leaves}


def random_variables(module, *inputs, seed=0):
    """Variables of `module` drawn at random (no init to compile): every weight away from zero,
    so each one must receive gradient, and positive BatchNorm variances."""
    rng = np.random.default_rng(seed)
    shapes = flat_shapes(jax.eval_shape(module.init, jax.random.key(0), *inputs))
    flat = {
        name: rng.uniform(0.5, 2.0, shape) if name.endswith("/var") else rng.normal(0, 0.2, shape)
        for name, shape in shapes.items()
    }
    return weights.unflatten({k: v.astype(np.float32) for k, v in flat.items()})


def train_and_eval(module, variables, rgb, aux, mask, key):
    """One training forward/backward (BCE on every output channel) and one eval forward."""

    def loss(params):
        logits, updates = module.apply(
            {**variables, "params": params}, rgb, aux,
            train=True, rngs={"dropout": key}, mutable=["batch_stats"],
        )
        bce = jnp.mean(jax.nn.softplus(logits) - logits * mask)
        return bce, (logits, updates["batch_stats"])

    (_, (logits, batch_stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return logits, module.apply(variables, rgb, aux), grads, batch_stats


# Together with the component and late-fusion tests below, these runs use every fusion, decoder,
# attention position and arch. DeepLabV3+ reads only strides 4 and 32, so it runs on the single
# encoder, where every stage still feeds the coarsest map.
RUNS = {
    "dual_cbam_hybrid_ds_attention": tiny(
        fusion="cbam", decoder="hybrid", deep_supervision=True,
        input_attention="eca", encoder_attention="se", decoder_attention="cbam",
    ),
    "single_rgb_dem_deeplab": tiny(
        arch="single", bands=("red", "green", "blue", "dem"), decoder="deeplabv3plus",
        input_attention="se", encoder_attention="cbam",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_variant_trains_with_finite_gradients(name):
    cfg = RUNS[name]
    module = models.build(cfg)
    rgb, aux, mask = random_inputs()
    variables = random_variables(module, rgb, aux)
    logits, eval_logits, grads, new_stats = jax.jit(train_and_eval, static_argnums=0)(
        module, variables, rgb, aux, mask, jax.random.key(0)
    )
    heads = 3 if cfg.deep_supervision else 1
    assert logits.shape == (2, SIZE, SIZE, heads) and logits.dtype == jnp.float32
    assert eval_logits.shape == (2, SIZE, SIZE, 1) and eval_logits.dtype == jnp.float32
    flat_grads = weights.flatten(grads)
    assert all(np.isfinite(g).all() for g in flat_grads.values())
    # Every parameter takes part: a variant that left a layer unwired would have zero gradient.
    assert not [k for k, g in flat_grads.items() if not np.any(g)]
    old_stats = weights.flatten(variables["batch_stats"])
    assert not [k for k, v in weights.flatten(new_stats).items() if np.allclose(v, old_stats[k])]


@pytest.mark.slow
def test_late_fusion_blends_two_full_models():
    """Late fusion's own parts: the blend and its gradient (the encoder-decoder-heads below it
    are the dual model's, whose gradients the runs above check; skipping them halves the time)."""
    cfg = tiny(arch="late", decoder="fpn", decoder_attention="eca")
    module = models.build(cfg)
    rgb, aux, mask = random_inputs()
    variables = random_variables(module, rgb, aux)
    params = variables["params"]

    @jax.jit
    def blend_checks(alpha, key):
        def loss(alpha):
            logits, _ = module.apply(
                {**variables, "params": {**params, "blend_logit": alpha}}, rgb, aux,
                train=True, rngs={"dropout": key}, mutable=["batch_stats"],
            )
            return jnp.mean(jax.nn.softplus(logits) - logits * mask), logits

        # sigma(alpha) = 1 (alpha = 40) keeps only the RGB model, whose logits do not see AUX: one
        # eval batch holds each sample twice, the second time with AUX shifted.
        rgb_only = module.apply(
            {**variables, "params": {**params, "blend_logit": 40.0}},
            jnp.concatenate([rgb, rgb]), jnp.concatenate([aux, aux + 1]),
        )
        return jax.value_and_grad(loss, has_aux=True)(alpha), jnp.split(rgb_only, 2)

    alpha = params["blend_logit"]
    ((_, logits), grad), (rgb_only, shifted_aux) = blend_checks(alpha, jax.random.key(0))
    assert logits.shape == (2, SIZE, SIZE, 1) and np.isfinite(logits).all()
    assert np.isfinite(grad) and grad != 0
    np.testing.assert_allclose(rgb_only, shifted_aux, rtol=1e-6)


def test_remaining_fusions_and_upernet_pass_gradients():
    """The fusions and the decoder the runs above leave out, on a random nano-sized pyramid."""
    rng = np.random.default_rng(0)
    rgb = [rng.normal(size=(2, 16 >> i, 16 >> i, 32 << i)).astype(np.float32) for i in range(4)]
    aux = [rng.normal(size=f.shape).astype(np.float32) for f in rgb]
    kinds = ("concat", "weighted_sum", "eca", "se")
    fusions = {kind: fusion.CrossModalFusion(kind) for kind in kinds}
    upernet = DECODERS["upernet"](32)

    params = {k: random_variables(m, rgb, aux)["params"] for k, m in fusions.items()}
    upernet_variables = random_variables(upernet, rgb)
    params["upernet"], stats = upernet_variables["params"], upernet_variables["batch_stats"]

    def forward(params, rgb, aux):
        fused = {k: m.apply({"params": params[k]}, rgb, aux) for k, m in fusions.items()}
        (decoded,), _ = upernet.apply(
            {"params": params["upernet"], "batch_stats": stats}, fused["concat"],
            train=True, mutable=["batch_stats"],
        )
        loss = sum(jnp.sum(f**2) for pyramid in fused.values() for f in pyramid)
        loss = loss + jnp.sum(decoded**2)
        return loss, (fused, decoded)

    forward_and_grads = jax.jit(jax.value_and_grad(forward, argnums=(0, 1, 2), has_aux=True))
    (_, (fused, decoded)), grads = forward_and_grads(params, rgb, aux)
    for pyramid in fused.values():
        assert [f.shape for f in pyramid] == [f.shape for f in rgb]
    assert decoded.shape == (2, 16, 16, 32)
    for tree in grads:  # every parameter and both streams receive gradient
        assert all(np.isfinite(g).all() and np.any(g) for g in jax.tree.leaves(tree))
    w = 1 / (1 + np.exp(-params["weighted_sum"]["scale_0"]["weight_logit"]))
    np.testing.assert_allclose(
        fused["weighted_sum"][0], w * rgb[0] + (1 - w) * aux[0], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------- pretrained encoders


def save_nano_weights(path, params) -> None:
    """A converted-checkpoint file as convert/timm_to_flax.py writes it, for the nano config."""
    weights.save(path, params, {"model": "swinv2_nano", "in_chans": 3, "img_size": SIZE})


@pytest.mark.slow
def test_pretrained_timm_weights_land_in_both_encoders(tmp_path, perturb_timm):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from experiments.torch_twin import swinv2_features

    torch.manual_seed(0)
    timm_rgb = perturb_timm(swinv2_features("swinv2_nano", 3, SIZE), seed=0).eval()
    state = {k: v.numpy() for k, v in timm_rgb.state_dict().items()}
    nano = swinv2.CONFIGS["swinv2_nano"]
    save_nano_weights(tmp_path / "nano.safetensors", swinv2.timm_to_flax(state, nano, 3))
    # The paper's AUX warm start in torch layout: the RGB filters, then their mean as channel 4.
    timm_aux = swinv2_features("swinv2_nano", 4, SIZE).eval()
    aux_state = dict(timm_rgb.state_dict())
    kernel = aux_state["patch_embed.proj.weight"]
    aux_state["patch_embed.proj.weight"] = torch.cat([kernel, kernel.mean(1, keepdim=True)], dim=1)
    timm_aux.load_state_dict(aux_state)

    path = tmp_path / "nano.safetensors"
    module, variables = models.create("tiny", img_size=SIZE, pretrained=path)
    assert module.config == tiny()
    rgb, aux, _ = random_inputs(seed=5)
    for stream, x, reference in (("rgb", rgb, timm_rgb), ("aux", aux, timm_aux)):
        encoder = swinv2.SwinV2(nano, in_chans=x.shape[-1], img_size=SIZE)
        ours = jax.jit(encoder.apply)({"params": variables["params"][f"{stream}_encoder"]}, x)
        with torch.no_grad():
            theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == tuple(b.shape)
            assert relative_l2(a, b.numpy()) < 1e-4


def test_load_pretrained_replaces_only_encoder_weights(tmp_path):
    nano = swinv2.CONFIGS["swinv2_nano"]
    rng = np.random.default_rng(0)
    file_params = {
        "/".join(path[1:]): rng.normal(size=shape).astype(np.float32)
        for path, shape in swinv2.variable_shapes(nano, 3).items()
    }
    save_nano_weights(tmp_path / "nano.safetensors", {"params": weights.unflatten(file_params)})
    cfg = tiny(encoder_attention="se")  # encoder gates the file does not have
    shapes = jax.eval_shape(lambda: models.init(models.build(cfg), cfg, jax.random.key(0)))
    before = {
        name: rng.normal(size=shape).astype(np.float32)
        for name, shape in flat_shapes(shapes).items()
    }
    loaded = models.load_pretrained(weights.unflatten(before), cfg, tmp_path / "nano.safetensors")
    after = weights.flatten(loaded)
    assert after.keys() == before.keys()
    kernel = file_params["patch_embed/proj/kernel"]
    for name, value in after.items():
        stream, _, rest = name.partition("_encoder/")
        if name == "params/aux_encoder/patch_embed/proj/kernel":  # channel-mean warm start
            warm_start = np.concatenate([kernel, kernel.mean(2, keepdims=True)], axis=2)
            np.testing.assert_allclose(value, warm_start, rtol=1e-6)
        elif rest in file_params and stream in ("params/rgb", "params/aux"):
            np.testing.assert_array_equal(value, file_params[rest])
        else:  # decoder, fusion, head, BN statistics, the encoder's attention gates
            np.testing.assert_array_equal(value, before[name])
    assert any("stage_attention" in name for name in after)


def test_pretrained_file_of_another_encoder_is_a_config_error(tmp_path):
    nano = swinv2.CONFIGS["swinv2_nano"]
    shapes = swinv2.variable_shapes(nano, 3)
    variables = weights.unflatten({"/".join(k): np.zeros(s, np.float32) for k, s in shapes.items()})
    path = tmp_path / "nano.safetensors"
    weights.save(path, variables, {"model": "swinv2_nano", "in_chans": 3, "img_size": SIZE})
    with pytest.raises(ConfigError, match="swinv2_nano.*swinv2_small_window8_256"):
        models.load_pretrained({}, PAPER, path)


def test_norms_use_two_pass_variance_like_torch():
    """Features with a large mean and a small spread (DEM metres, say; mean 100, spread 0.05): the one-pass
    E[x^2] - E[x]^2 loses the variance to cancellation in float32, torch's two-pass does not."""
    rng = np.random.default_rng()
    x = (100.0 + rng.normal(0.0, 0.05, (2, 4, 4, 8))).astype(np.float32)
    x64 = x.astype(np.float64)

    ln = swinv2.LayerNorm()
    y = ln.apply(ln.init(jax.random.key(0), x), x)
    mean = x64.mean(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), want, atol=2e-3)

    bn = layers.BatchNorm(use_running_average=False)
    y, _ = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    mean = x64.mean((0, 1, 2))
    want = (x64 - mean) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), want, atol=2e-3)


def conv_same_reference(x: np.ndarray, kernel: np.ndarray, dilation: int) -> np.ndarray:
    """'Same' stride-1 convolution NHWC x HWIO by its definition, in float64."""
    taps = kernel.shape[0]
    pad = dilation * (taps - 1) // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for dy, dx in np.ndindex(taps, taps):
        window = padded[:, dy * dilation : dy * dilation + height, dx * dilation : dx * dilation + width]
        out += window @ kernel[dy, dx].astype(np.float64)
    return out


@pytest.mark.parametrize("taps, dilation", [(3, 1), (1, 1), (3, 2)])
def test_parts_conv_is_the_conv_of_the_concatenation_with_nn_convs_kernel(taps, dilation):
    """Decoders pass the parts of a concatenation; the conv must equal that of the whole, and its
    kernel (name, shape, initial values) must be nn.Conv's, so that checkpoints and converted
    weights fit."""
    rng = np.random.default_rng()
    widths = rng.integers(1, 24, size=rng.integers(2, 5))
    parts = tuple(rng.normal(size=(2, 9, 7, w)).astype(np.float32) for w in widths)
    whole = np.concatenate(parts, axis=-1)
    conv = layers.PartsConv(16, taps, dilation, name="conv")
    variables = conv.init(jax.random.key(0), parts)
    flax_conv = nn.Conv(16, (taps, taps), kernel_dilation=dilation, use_bias=False, name="conv")
    np.testing.assert_array_equal(variables["params"]["kernel"],
                                  flax_conv.init(jax.random.key(0), whole)["params"]["kernel"])
    kernel = np.asarray(variables["params"]["kernel"])
    np.testing.assert_allclose(conv.apply(variables, parts),
                               conv_same_reference(whole, kernel, dilation), atol=2e-5)
    np.testing.assert_allclose(conv.apply(variables, (whole,)),
                               conv_same_reference(whole, kernel, dilation), atol=2e-5)
