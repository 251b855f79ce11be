"""experiments/op_profile.py: both frameworks' ops land in the op class of the code they came from."""

import numpy as np
import pytest

from experiments import op_profile
from experiments.op_profile import CLASSES, Site, op_class

ATTN_MATMUL, LINEAR, CPB, SOFTMAX, LAYER_NORM, CONV3, CONV1, BATCH_NORM, RESIZE, OTHER, \
    OVERHEAD, UPDATE, UNATTRIBUTED = CLASSES


@pytest.mark.parametrize("site, expected", [
    (Site(("rgb_encoder", "layers_0", "blocks_1", "attn"), "dot_general"), ATTN_MATMUL),
    (Site(("rgb_encoder", "layers_0", "blocks_1", "attn"), "aten::matmul"), ATTN_MATMUL),
    (Site(("rgb_encoder", "layers_0", "blocks_1", "attn"), "aten::linear"), LINEAR),  # timm's qkv
    (Site(("rgb_encoder", "layers_0", "blocks_1", "attn", "qkv"), "dot_general"), LINEAR),
    (Site(("aux_encoder", "layers_2", "blocks_0", "mlp", "fc1"), "aten::linear"), LINEAR),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "attn", "cpb_fc1"), "dot_general"), CPB),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "attn", "cpb_mlp", "0"), "aten::linear"), CPB),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "attn"), "gather"), CPB),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "attn"), "aten::sigmoid"), CPB),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "attn"), "reduce_max"), SOFTMAX),
    (Site(("rgb_encoder", "layers_1", "blocks_0", "norm2"), "aten::layer_norm"), LAYER_NORM),
    (Site(("decoder", "node_0_1", "conv1", "conv"), "conv_general_dilated", 3), CONV3),
    (Site(("decoder", "proj_0", "conv"), "aten::conv2d", 1), CONV1),
    (Site(("rgb_encoder", "patch_embed", "proj"), "conv_general_dilated", 4), CONV1),
    (Site(("decoder", "node_0_1", "conv1", "bn"), "aten::batch_norm"), BATCH_NORM),
    (Site(("decoder", "resize_bilinear"), "dot_general"), RESIZE),
    (Site(("decoder",), "aten::upsample_bilinear2d"), RESIZE),
    (Site(("rgb_encoder", "layers_0", "blocks_1"), "aten::roll"), OTHER),
    (Site(("rgb_encoder", "layers_0"), "module"), OVERHEAD),
    (Site(None, "aten::_fused_adamw_"), UPDATE),
    (Site(None, ""), UNATTRIBUTED),
])
def test_op_class(site, expected):
    assert op_class(site) == expected


def toy_flax():
    """A model with the paper model's module names: attention (qkv, scores, Log-CPB-like bias),
    a layer norm, a 3x3 and a 1x1 convolution, a bilinear resize."""
    import flax.linen as nn
    import jax.numpy as jnp

    from jaxswin.models.layers import resize_bilinear

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            q, k = jnp.split(nn.Dense(2 * x.shape[-1], name="qkv")(x), 2, axis=-1)
            table = nn.Dense(1, name="cpb_fc1")(jnp.ones((7, 2)))[:, 0]
            bias = nn.sigmoid(table[jnp.arange(x.shape[1]) % 7])
            return nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k) + bias) @ x

    class Toy(nn.Module):
        @nn.compact
        def __call__(self, x):  # (B, 8, 8, C)
            b, h, w, c = x.shape
            y = Attention(name="attn")(x.reshape(b, h * w, c)).reshape(x.shape)
            y = nn.LayerNorm(name="norm1")(y)
            y = nn.relu(nn.Conv(16, (3, 3), name="conv")(y))
            y = nn.Conv(1, (1, 1), name="head")(y)
            return resize_bilinear(y, (16, 16))

    return Toy()


def test_jax_ops_are_classified_by_module_and_direction():
    import jax

    model = toy_flax()
    x = np.random.default_rng().standard_normal((2, 8, 8, 8)).astype(np.float32)
    params = model.init(jax.random.key(0), x)
    step = jax.jit(jax.grad(lambda p, x: (model.apply(p, x) ** 2).mean()))
    compiled = step.lower(params, x).compile()
    _, sites = op_profile.jax_sites(compiled.as_text(), "Toy")
    found = {(op_class(site), direction) for site, direction in sites.values()}
    for name in (ATTN_MATMUL, LINEAR, CPB, LAYER_NORM, CONV3, RESIZE):
        assert (name, "forward") in found and (name, "backward") in found, name
    # Every convolution of the 3x3 layer, weight gradient included (its window is the 8x8 map),
    # is 3x3; the 1x1 head's are not.
    conv_sites = [s for s, _ in sites.values() if s.op == "conv_general_dilated"]
    assert {s.kernel for s in conv_sites if "conv" in s.path} == {3}
    assert {op_class(s) for s in conv_sites if "head" in s.path} == {CONV1}

    times = op_profile.jax_op_times(compiled, lambda: jax.block_until_ready(compiled(params, x)),
                                    3, "Toy")
    assert times[CONV3]["backward"] > 0 and times[ATTN_MATMUL]["forward"] > 0
    assert set(times) <= set(CLASSES)


# A weight gradient as XLA leaves it in the paper model's train step: the input and the output
# gradient transposed, convolved over the whole 32x32 map, no source metadata anywhere.
WEIGHT_GRADIENT_HLO = """HloModule jit_train_step, entry_computation_layout={()->f32[768,3,3,256]{3,2,1,0}}

%fused_computation.861 (param_0.1: f32[768,32,32,8], param_1.1: f32[32,32,8,256]) -> f32[768,3,3,256] {
  %param_0.1 = f32[768,32,32,8]{3,2,1,0} parameter(0)
  %param_1.1 = f32[32,32,8,256]{3,2,1,0} parameter(1)
  ROOT %convolution.62 = f32[768,3,3,256]{3,2,1,0} convolution(%param_0.1, %param_1.1), window={size=32x32 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

ENTRY %main.1 (x: f32[768,32,32,8], dy: f32[32,32,8,256]) -> f32[768,3,3,256] {
  %x = f32[768,32,32,8]{3,2,1,0} parameter(0)
  %dy = f32[32,32,8,256]{3,2,1,0} parameter(1)
  ROOT %ynn_fusion.861 = f32[768,3,3,256]{3,2,1,0} fusion(%x, %dy), kind=kCustom, calls=%fused_computation.861, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
}
"""


@pytest.mark.parametrize("kernel, expected", [(3, CONV3), (1, CONV1)])
def test_a_weight_gradient_without_metadata_is_classed_by_the_kernel_it_outputs(kernel, expected):
    text = WEIGHT_GRADIENT_HLO.replace("768,3,3,256", f"768,{kernel},{kernel},256")
    _, sites = op_profile.jax_sites(text, "DualSwinFusionSeg")
    site, direction = sites["ynn_fusion.861"]
    assert (op_class(site), direction, site.kernel) == (expected, "backward", kernel)


def test_torch_backward_ops_are_traced_to_their_forward_module():
    torch = pytest.importorskip("torch")
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.qkv = nn.Linear(c, 2 * c)
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x):
            q, k = self.qkv(x).chunk(2, dim=-1)
            bias = torch.sigmoid(self.cpb_mlp(torch.ones(x.shape[1], 2)))[:, 0]
            return torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ x

    class Toy(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.attn, self.norm1 = Attention(c), nn.LayerNorm(c)
            self.conv, self.head = nn.Conv2d(c, 16, 3, padding=1), nn.Conv2d(16, 1, 1)

        def forward(self, x):  # (B, C, 8, 8)
            b, c, h, w = x.shape
            y = self.attn(x.flatten(2).transpose(1, 2))
            y = self.norm1(y).transpose(1, 2).reshape(b, c, h, w)
            y = self.head(torch.relu(self.conv(y)))
            return nn.functional.interpolate(y, size=(16, 16), mode="bilinear")

    model = Toy()
    x = torch.randn(2, 8, 8, 8)

    def step():
        model.zero_grad()
        (model(x) ** 2).mean().backward()

    times = op_profile.torch_op_times(model, step, 2)
    for name in (ATTN_MATMUL, LINEAR, CPB, LAYER_NORM, CONV3, CONV1, RESIZE):
        assert times[name]["forward"] > 0 and times[name]["backward"] > 0, name
    assert times[UPDATE]["forward"] > 0  # the loss, outside the model
    # The hooks are gone afterwards: a plain call records no module ranges.
    assert not model._forward_pre_hooks and not model.attn._forward_hooks
