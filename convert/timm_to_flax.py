"""``python convert/timm_to_flax.py ...``: the same command as ``jaxswin-convert timm``
(jaxswin.convert.from_timm), kept as the repository's script."""

from jaxswin.convert.__main__ import entry_point

main = entry_point("timm", "convert.timm_to_flax")

if __name__ == "__main__":
    main()
