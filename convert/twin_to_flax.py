"""``python convert/twin_to_flax.py ...``: the same command as ``jaxswin-convert twin``
(jaxswin.convert.from_twin), kept as the repository's script."""

from jaxswin.convert.__main__ import entry_point
from jaxswin.convert.from_twin import twin_to_flax  # noqa: F401  (the tests' and users' import)

main = entry_point("twin", "convert.twin_to_flax")

if __name__ == "__main__":
    main()
