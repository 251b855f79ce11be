"""Test-time augmentation: a model looks at each view of a tile; its answers are mapped back.

A view is a (forward, inverse) pair of maps on NHWC arrays (square tiles: the rotations keep
the shape). Named sets, the `--tta` choices (paper §4.2 and Table 11):

    none   identity
    hflip  identity, horizontal flip
    vflip  identity, vertical flip
    flip2  identity, horizontal flip, vertical flip          (Table 11's "H-flip + V-flip")
    rot4   identity, horizontal flip, vertical flip, 90°     (the paper's 4 views, the default)
    d4     the 8 symmetries of the square: 4 rotations, 2 flips, 2 diagonal reflections
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from jaxswin.errors import ConfigError

Map = Callable[[jax.Array], jax.Array]


@dataclass(frozen=True)
class View:
    name: str
    forward: Map
    inverse: Map


def _rotate(quarter_turns: int) -> Map:
    return lambda x: jnp.rot90(x, quarter_turns, axes=(1, 2))  # counter-clockwise, as torch.rot90


def _flip(axis: int) -> Map:
    return lambda x: jnp.flip(x, axis)


def _transpose(x):
    return jnp.swapaxes(x, 1, 2)


def _anti_transpose(x):
    return jnp.flip(jnp.swapaxes(x, 1, 2), (1, 2))


def _self_inverse(name: str, fn: Map) -> View:
    return View(name, fn, fn)


IDENTITY = _self_inverse("identity", lambda x: x)
HFLIP = _self_inverse("hflip", _flip(2))
VFLIP = _self_inverse("vflip", _flip(1))
ROT90 = View("rot90", _rotate(1), _rotate(-1))
ROT180 = _self_inverse("rot180", _rotate(2))
ROT270 = View("rot270", _rotate(3), _rotate(1))
TRANSPOSE = _self_inverse("transpose", _transpose)
ANTI_TRANSPOSE = _self_inverse("anti_transpose", _anti_transpose)

VIEWS: dict[str, tuple[View, ...]] = {
    "none": (IDENTITY,),
    "hflip": (IDENTITY, HFLIP),
    "vflip": (IDENTITY, VFLIP),
    "flip2": (IDENTITY, HFLIP, VFLIP),
    "rot4": (IDENTITY, HFLIP, VFLIP, ROT90),
    "d4": (IDENTITY, ROT90, ROT180, ROT270, HFLIP, VFLIP, TRANSPOSE, ANTI_TRANSPOSE),
}
NAMES = tuple(VIEWS)


def get(name: str) -> tuple[View, ...]:
    if name not in VIEWS:
        choices = ", ".join(NAMES)
        raise ConfigError(f"--tta / predict.tta: unknown TTA '{name}' (choices: {choices})")
    return VIEWS[name]


def average(predict: Callable[..., jax.Array], views, *inputs: jax.Array) -> jax.Array:
    """Mean over `views` of `predict(*inputs)` seen through each view and mapped back.

    `inputs` are NHWC arrays of one spatial size (e.g. the rgb and aux streams); `predict`
    returns an NHWC map of that size (probabilities: averaging logits would be another model).
    """
    outputs = [view.inverse(predict(*map(view.forward, inputs))) for view in views]
    return sum(outputs) / len(outputs)
