"""Process-wide JAX settings for the command-line tools (jaxswin.train and jaxswin.predict turn
them on)."""

from __future__ import annotations

import os

import jax

from jaxswin.data.dataset import cache_dir


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs on disk ($JAX_COMPILATION_CACHE_DIR, else
    $JAXSWIN_CACHE/xla, else ~/.cache/jaxswin/xla): a resumed or repeated run skips the
    minute-long compile of the train step or of the prediction ensemble (the cache is keyed by
    program, devices and flags)."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
