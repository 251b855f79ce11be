"""Per-process XLA settings for the host CPU (jaxswin.runtime.use_cpu_flags)."""

import os
import subprocess
import sys
from pathlib import Path

import jaxlib
import pytest

from jaxswin import runtime

ROOT = Path(__file__).resolve().parent.parent
INTEL = runtime.CPU_XLA_FLAGS["intel"]
measured_jaxlib_only = pytest.mark.skipif(
    not jaxlib.__version__.startswith(runtime.CPU_FLAGS_JAXLIB),
    reason=f"jaxlib {jaxlib.__version__}: the CPU flags apply to jaxlib {runtime.CPU_FLAGS_JAXLIB}x "
           "only, the release they were measured with")


def name(flag: str) -> str:
    return flag.split("=")[0]


@measured_jaxlib_only
def test_intel_gets_its_flags_amd_and_others_xlas_defaults():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert runtime.use_cpu_flags(environ, "intel") == list(INTEL)
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *INTEL]
    assert runtime.use_cpu_flags(environ, "intel") == []  # already set: nothing twice
    for family in ("amd", "other"):
        environ = {}
        assert runtime.use_cpu_flags(environ, family) == [] and "XLA_FLAGS" not in environ


@measured_jaxlib_only
def test_a_flag_the_user_set_is_theirs_and_the_opt_out_keeps_xlas_defaults():
    users = f"{name(INTEL[0])}="  # the user's own value (here: no fusion) wins
    environ = {"XLA_FLAGS": users}
    assert runtime.use_cpu_flags(environ, "intel") == list(INTEL[1:])
    assert environ["XLA_FLAGS"].split() == [users, *INTEL[1:]]
    environ = {"JAXSWIN_XLA_DEFAULTS": "1", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert runtime.use_cpu_flags(environ, "intel") == []
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_another_jaxlib_gets_xlas_defaults(monkeypatch):
    monkeypatch.setattr(runtime, "CPU_FLAGS_JAXLIB", "0.0.")
    environ = {}
    assert runtime.use_cpu_flags(environ, "intel") == [] and environ == {}


@measured_jaxlib_only
def test_the_installed_xla_knows_the_flags_and_compiles_under_them():
    """XLA aborts the process on a flag name it does not know: each set of flags must start a
    backend and run a jitted matmul and convolution."""
    program = ("import jax, jax.numpy as jnp; x = jnp.ones((2, 8, 8, 4)); "
               "w = jnp.ones((3, 3, 4, 4)); "
               "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
               "dimension_numbers=('NHWC', 'HWIO', 'NHWC')); "
               "print(float(jax.jit(lambda a: (a @ a.T).sum())(x.reshape(16, 32)) + y.sum()))")
    for flags in runtime.CPU_XLA_FLAGS.values():
        env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAXSWIN_XLA_DEFAULTS": "1"}
        result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        # ones: the 16x16 Gram matrix holds 32s; each conv output is 4 channels x its valid
        # taps, which sum to 22 x 22 over an 8x8 map (2 + 6 x 3 + 2 per axis).
        assert float(result.stdout) == 16 * 16 * 32 + 2 * 4 * 4 * 22 * 22


@measured_jaxlib_only
@pytest.mark.parametrize("module", ["jaxswin.train", "jaxswin.predict"])
def test_the_commands_set_the_flags_of_an_intel_cpu_and_say_so(module, tmp_path):
    program = (
        "import sys; from jaxswin import runtime; "
        "runtime.cpu_info = lambda: {'model': 'Fake Xeon', 'family': 'intel', 'cpuid': '', "
        "'features': []}; "
        f"from {module} import main; "
        "sys.argv = ['x', *sys.argv[1:]]; main()"
    )
    args = (["--fold", "0", "--set", "train.epochs=0"] if module == "jaxswin.train"
            else ["--checkpoint", str(tmp_path / "none"), "--input", str(tmp_path),
                  "--output", str(tmp_path / "out")])
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSWIN_XLA_DEFAULTS")}
    env["JAXSWIN_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-c", program, *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]  # the bad option, after the flags
    assert f"XLA flags for this Intel CPU: {' '.join(INTEL)}" in result.stderr
