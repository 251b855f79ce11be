"""Flax variables <-> safetensors files.

Nested variable dicts are stored flat, one tensor per leaf, named by the path joined with '/'
(``params/rgb_encoder/layers_0/blocks_0/attn/qkv/kernel``); string metadata rides in the
safetensors header (model name, channel count, image size, source, config...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxswin.errors import UserError


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(flatten(dict(value), name))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def describe_misfit(problems: dict[str, list[str]], shown: int = 5) -> str:
    """'2 unknown: a, b; 250 missing: c, d, e, f, g ...': the count of each kind of tensor that
    does not fit and its first names (a wrong checkpoint misfits every one of hundreds)."""
    return "; ".join(
        f"{len(names)} {kind}: {', '.join(names[:shown])}{' ...' if len(names) > shown else ''}"
        for kind, names in problems.items()
        if names
    )


def save(path: str | Path, variables: dict, metadata: dict[str, str] | None = None) -> None:
    """Writes `variables` (any nest of dicts of arrays) to a .safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(variables).items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save leaves nothing (the file may be 100s of MB)
        raise


def check_target(path: str | Path, option: str, overwrite: bool) -> None:
    """Before any work, that :func:`save` can write `path` (given as `option`): no file where
    a folder must be, no folder in its place, an existing file only with `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give the file to write, e.g. "
                        f"{path / 'model.safetensors'}")
    blocking = next(p for p in path.parents if p.exists())
    if not blocking.is_dir():
        raise UserError(f"{option} {path}: {blocking} is a file, not a folder; choose another "
                        f"{option}")
    if path.exists() and not overwrite:
        raise UserError(f"{option} {path}: exists already; pass --overwrite to replace it")


def metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors file (without reading its tensors)."""
    return _read(path, lambda handle: dict(handle.metadata() or {}))


def tensor(path: str | Path, name: str) -> np.ndarray | None:
    """One tensor of a .safetensors file by its flat name, or None when the file has none such."""
    return _read(path, lambda handle: handle.get_tensor(name) if name in handle.keys() else None)


def load(path: str | Path) -> tuple[dict, dict[str, str]]:
    """Reads a file written by :func:`save`: (nested variables of numpy arrays, metadata)."""
    flat, meta = _read(path, lambda handle: (
        {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})
    ))
    return unflatten(flat), meta


def _read(path: str | Path, read):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return read(handle)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .safetensors file ({err})") from None
