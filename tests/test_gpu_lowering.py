"""The GPU paths checked without a GPU (issue 14 part 6): the jitted train step (bf16 and fp16
with loss scaling, data-parallel over a 2-device mesh) and the prediction function are lowered
for CUDA with JAX's cross-platform lowering on this CPU-only machine. The lowering must succeed,
keep the mesh (2 partitions, the batch split over them; XLA's SPMD partitioner adds the
cross-device reductions when it compiles, which needs the GPU), compute in the asked precision,
and hold no CPU-only custom call.

The lowering runs in a subprocess (this file run as a script) because a 2-device CPU mesh needs
XLA_FLAGS before JAX starts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Custom-call targets that exist only in JAX's CPU lowering rules: LAPACK (linalg), DUCC (FFT),
# host callbacks, and anything named for the CPU.
CPU_ONLY = re.compile(r"lapack|ducc|cpu", re.IGNORECASE)


def custom_calls(stablehlo: str) -> set[str]:
    """The custom-call targets of a StableHLO module's text."""
    return set(re.findall(r"custom_call @([\w.]+)", stablehlo)) | set(
        re.findall(r'call_target_name = "([^"]+)"', stablehlo)
    )


def cpu_only_calls(stablehlo: str) -> set[str]:
    return {name for name in custom_calls(stablehlo) if CPU_ONLY.search(name)}


# ----------------------------------------------------------------------------- the subprocess


def lower_train_step(precision: str, global_batch: int = 4) -> str:
    """StableHLO of the train step of the tiny preset, data-parallel over every device, lowered
    for CUDA from abstract inputs (nothing is initialised or compiled)."""
    from experiments import bench
    from jaxswin import config

    step, inputs = bench.abstract_train_step(config.load("tiny"), precision, global_batch)
    return step.trace(*inputs).lower(lowering_platforms=("cuda",)).as_text()


def lower_prediction(precision: str, batch: int = 4) -> str:
    """StableHLO of the prediction function (2 folds of the tiny preset x rot4 views), the
    batch split over every device, lowered for CUDA."""
    import jax
    import jax.numpy as jnp

    from jaxswin import config, inference, models, parallel

    cfg = config.load("tiny")
    placement = parallel.Placement.all_devices()
    sharding, replicated = placement.data, placement.replicated
    module = models.build(cfg.model)
    variables = jax.eval_shape(lambda: models.init(module, cfg.model, jax.random.key(0)))

    def folds(shape, dtype):  # two members stacked, as Ensemble scans over them
        return jax.ShapeDtypeStruct((2, *shape), dtype, sharding=replicated)

    stacked = [(jax.tree.map(lambda v: folds(v.shape, v.dtype), variables),
                folds((7,), jnp.float32), folds((7,), jnp.float32))]
    side = cfg.model.img_size
    tiles = jax.ShapeDtypeStruct((batch, side, side, 7), jnp.float32, sharding=sharding)
    proba = inference._compiled_proba((cfg.model,), "rot4", sharding, precision)
    return proba.trace(stacked, tiles).lower(lowering_platforms=("cuda",)).as_text()


def main() -> None:
    """Prints, per lowering, its custom calls and the facts the tests check, as JSON."""
    import jax

    out = {"devices": jax.device_count()}
    lowerings = {f"train_{p}": functools.partial(lower_train_step, p) for p in ("bf16", "fp16")}
    lowerings["predict_bf16"] = functools.partial(lower_prediction, "bf16")
    for name, lower in lowerings.items():
        text = lower()
        out[name] = {
            "custom_calls": sorted(custom_calls(text)),
            "cpu_only": sorted(cpu_only_calls(text)),
            "num_partitions": re.findall(r"mhlo.num_partitions = (\d+)", text),
            "meshes": re.findall(r"sdy.mesh @mesh = <\[([^\]]*)\]>", text),
            # Shardy annotations of the arguments: the batch split on the mesh axis.
            "split_args": len(re.findall(r'sdy.sharding<@mesh, \[\{"(?:data|batch)"\}', text)),
            "bf16_ops": len(re.findall(r"tensor<[^>]*xbf16>", text)),
            "f16_ops": len(re.findall(r"tensor<[^>]*xf16>", text)),
        }
    print(json.dumps(out))


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def lowered():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_detector_finds_cpu_only_calls():
    """What the CUDA checks rely on: a CPU lowering of linalg holds LAPACK calls, found here;
    the CUDA lowering of the same function holds cuSOLVER calls instead."""
    import jax
    import jax.numpy as jnp

    matrix = jax.ShapeDtypeStruct((8, 8), jnp.float32)
    traced = jax.jit(jnp.linalg.inv).trace(matrix)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert cpu_only_calls(cpu) and any("lapack" in c for c in cpu_only_calls(cpu))
    assert not cpu_only_calls(cuda) and any("cusolver" in c for c in custom_calls(cuda))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_step_lowers_for_cuda_on_a_two_device_mesh(lowered, precision):
    assert lowered["devices"] == 2
    facts = lowered[f"train_{precision}"]
    assert facts["cpu_only"] == [], facts["custom_calls"]
    assert facts["num_partitions"] == ["2"] and facts["meshes"] == ['"data"=2']
    assert facts["split_args"] == 4  # rgb, aux, mask and warp split over the 2 devices
    compute = "bf16_ops" if precision == "bf16" else "f16_ops"
    assert facts[compute] > 100  # the convolutions and matmuls compute in that precision


def test_prediction_lowers_for_cuda(lowered):
    facts = lowered["predict_bf16"]
    assert facts["cpu_only"] == [], facts["custom_calls"]
    assert facts["num_partitions"] == ["2"] and facts["meshes"] == ['"data"=2']
    assert facts["split_args"] == 2  # the tiles in, their probabilities out
    assert facts["bf16_ops"] > 100


def test_plan_extrapolates_the_compiled_footprint_linearly(monkeypatch, capsys):
    """bench --plan's arithmetic on known footprints: 3 GiB fixed + 0.5 GiB per tile."""
    from experiments import bench

    gib = bench.GIB
    monkeypatch.setattr(bench, "step_footprint",
                        lambda cfg, precision, batch: (int((3 + 0.5 * batch) * gib), 9e10))
    assert bench.main(["--plan", "--preset", "tiny", "--batch", "16", "--devices", "1,8",
                       "--precisions", "fp16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PLANNED, not measured")
    assert "90.0 GFLOP per tile" in out and "Fixed per GPU 3.00 GiB" in out
    assert "512 MiB per tile" in out
    assert "| 16 | 1 | 16 | 11.00 | yes | yes |" in out
    assert "| 16 | 8 | 2 | 4.00 | yes | yes |" in out
    assert "T4 16 GiB: 26, H100 80 GiB: 154" in out  # (16 - 3) / 0.5, (80 - 3) / 0.5
    with pytest.raises(SystemExit, match="does not split evenly over 3"):
        bench.main(["--plan", "--preset", "tiny", "--batch", "16", "--devices", "3"])


if __name__ == "__main__":
    main()
