"""TTA views: their inverses, the transformations they name, an equivariant model's agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswin import tta
from jaxswin.errors import ConfigError

ALL_VIEWS = {view.name: view for views in tta.VIEWS.values() for view in views}

# What each view does to a batch of square tiles, written with numpy.
EXPECTED_FORWARD = {
    "identity": lambda x: x,
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1, :],
    "rot90": lambda x: np.stack([np.rot90(t) for t in x]),
    "rot180": lambda x: x[:, ::-1, ::-1],
    "rot270": lambda x: np.stack([np.rot90(t, -1) for t in x]),
    "transpose": lambda x: x.transpose(0, 2, 1, 3),
    "anti_transpose": lambda x: x.transpose(0, 2, 1, 3)[:, ::-1, ::-1],
}


def _tile(shape=(2, 6, 6, 3)):
    return np.random.default_rng().normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ALL_VIEWS))
def test_view_is_the_transformation_it_names_and_inverts(name):
    view, x = ALL_VIEWS[name], _tile()
    np.testing.assert_array_equal(view.forward(jnp.asarray(x)), EXPECTED_FORWARD[name](x))
    np.testing.assert_array_equal(view.inverse(view.forward(jnp.asarray(x))), x)
    np.testing.assert_array_equal(view.forward(view.inverse(jnp.asarray(x))), x)


def test_registry():
    assert [v.name for v in tta.get("rot4")] == ["identity", "hflip", "vflip", "rot90"]
    assert [v.name for v in tta.get("flip2")] == ["identity", "hflip", "vflip"]
    d4 = tta.get("d4")
    x = _tile((1, 4, 4, 1))
    images = {np.asarray(v.forward(jnp.asarray(x))).tobytes() for v in d4}
    assert len(d4) == 8 and len(images) == 8  # eight distinct symmetries
    with pytest.raises(ConfigError, match="rot4"):
        tta.get("rot8")


def _conv_model(kernel):
    """Per-pixel mix of two streams, then a 3×3 convolution and a sigmoid."""

    def predict(rgb, aux):
        x = rgb.sum(-1, keepdims=True) - 0.5 * aux.sum(-1, keepdims=True)
        y = jax.lax.conv_general_dilated(
            x, kernel[:, :, None, None], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.sigmoid(y)

    return predict


@pytest.mark.parametrize("name", tta.NAMES)
def test_equivariant_model_agrees_with_no_tta(name):
    # A kernel with every symmetry of the square makes the model commute with all 8 views.
    isotropic = jnp.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 8
    model = jax.jit(lambda rgb, aux: tta.average(_conv_model(isotropic), tta.get(name), rgb, aux))
    rgb, aux = _tile((2, 8, 8, 3)), _tile((2, 8, 8, 4))
    np.testing.assert_allclose(model(rgb, aux), _conv_model(isotropic)(rgb, aux), atol=1e-6)


def test_views_change_a_direction_sensitive_model():
    # Control for the test above: a Sobel-like kernel is not symmetric, so TTA changes its output.
    sobel = jnp.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    rgb, aux = _tile((2, 8, 8, 3)), _tile((2, 8, 8, 4))
    averaged = tta.average(_conv_model(sobel), tta.get("rot4"), rgb, aux)
    assert np.max(np.abs(averaged - _conv_model(sobel)(rgb, aux))) > 1e-2
