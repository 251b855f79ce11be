"""Shared fixtures."""

import logging

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def jaxswin_logger_as_found():
    """A CLI run in-process (jaxswin.console.setup) gives the jaxswin logger its own handler and
    stops propagation to the root, where caplog listens; later tests get it back as it was."""
    logger = logging.getLogger("jaxswin")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


@pytest.fixture(scope="session")
def perturb_timm():
    """Moves a timm SwinV2's weights away from timm's init, so parity tests can fail.

    At init the res-post-norms are zero (every block is the identity), biases are zero, the logit
    scales all equal log(10) and the position-bias MLP is nearly flat: a converter that mixed any
    of them up would still match. Here vectors get N(0, 0.5) noise, the bias MLP N(0, 0.5)
    weights, and logit scales spread over [log 2, log 300], above the log(100) clamp too.
    """
    torch = pytest.importorskip("torch")

    def perturb(model, seed: int):
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("logit_scale"):
                    values = rng.uniform(np.log(2), np.log(300), param.shape)
                elif param.ndim == 1 or "cpb_mlp" in name:
                    values = param.numpy() + rng.normal(0, 0.5, param.shape)
                else:
                    continue
                param.copy_(torch.from_numpy(values.astype(np.float32)))
        return model

    return perturb
