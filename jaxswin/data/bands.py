"""Channel names and the band layouts (profiles) of the datasets in use.

Every array past the reader is in the CANONICAL order :data:`CHANNELS`; a profile says in which
order a dataset stores those seven channels in its files. The model's two streams are the RGB
channels (red, green, blue) and the auxiliary geophysical channels in the paper's order
(thermal, slope, DEM, gray), which is why the canonical order lists them that way.
"""

from __future__ import annotations

from jaxswin.errors import ConfigError

CHANNELS = ("red", "green", "blue", "thermal", "slope", "dem", "gray")
RGB = ("red", "green", "blue")
AUX = ("thermal", "slope", "dem", "gray")
assert CHANNELS == RGB + AUX  # normalize.split_streams slices the canonical order in two

PROFILES = {
    # PBVS 2026 MARS-LS / the paper (§4.1): bands 1-4 geophysical, 5-7 Viking RGB.
    "pbvs2026": ("thermal", "slope", "dem", "gray", "red", "green", "blue"),
    "mmlsv2": ("red", "green", "blue", "dem", "slope", "thermal", "gray"),
    # MMLS v1 (MarsLS-Net): colour stored BGR, then DEM, thermal inertia, slope, grayscale.
    "mmlsv1": ("blue", "green", "red", "dem", "thermal", "slope", "gray"),
}


def resolve(spec: str) -> tuple[str, ...]:
    """The file band order named by `spec`: a profile name or comma-separated channel names.

    The model reads both streams, so the list must name each canonical channel exactly once.
    """
    text = spec.strip().lower()
    if text in PROFILES:
        return PROFILES[text]
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if len(names) == 1:
        raise ConfigError(
            f"--bands {spec}: unknown band profile (profiles: {', '.join(PROFILES)}; "
            f"or list the file's bands in order, e.g. --bands {','.join(PROFILES['mmlsv2'])})"
        )
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        raise ConfigError(
            f"--bands {spec}: unknown channel name(s) {', '.join(unknown)} "
            f"(channels: {', '.join(CHANNELS)})"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--bands {spec}: channel(s) {', '.join(repeated)} listed more than once")
    missing = [n for n in CHANNELS if n not in names]
    if missing:
        raise ConfigError(
            f"--bands {spec}: the model needs all seven channels; missing {', '.join(missing)}"
        )
    return names


def to_canonical(channels: tuple[str, ...]) -> list[int]:
    """Band positions that reorder an image stored as `channels` into :data:`CHANNELS`."""
    return [channels.index(name) for name in CHANNELS]
