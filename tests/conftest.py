"""Shared fixtures."""

import logging
import struct

import numpy as np
import pytest

from jaxswin import runtime

# The suite runs under the XLA flags the command-line tools set on this CPU (none on AMD): what
# users run is what the parity tests check. Before any test starts JAX's backends.
runtime.use_cpu_flags()


@pytest.fixture(autouse=True)
def jaxswin_logger_as_new():
    """A CLI run in-process (jaxswin.console.setup), even in a module-scoped fixture, gives the
    jaxswin logger its own handler and stops propagation to the root, where caplog listens:
    every test starts and ends with the logger as a fresh process has it."""
    logger = logging.getLogger("jaxswin")

    def fresh():
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)

    fresh()
    yield
    fresh()


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


@pytest.fixture(scope="session")
def read_tensorboard():
    """folder -> {tag: {step: value}} of the scalars in its TensorBoard event files, read as
    TFRecords of Event protos (length, its CRC, the record, its CRC) without TensorBoard."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")

    def read(folder):
        scalars = {}
        for path in sorted(folder.glob("events.out.tfevents.*")):
            data, pos = path.read_bytes(), 0
            while pos < len(data):
                (length,) = struct.unpack("<Q", data[pos : pos + 8])
                event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
                pos += 12 + length + 4
                for value in event.summary.value:
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
        return scalars

    return read
