"""Dataset tools: ``python -m jaxswin.data SUBCOMMAND``.

    python -m jaxswin.data inspect PATH [--bands PROFILE]   # band statistics and band order

One function per subcommand; each only parses its options and calls into the data modules.
"""

from __future__ import annotations

import argparse
import sys

from jaxswin.data import bands
from jaxswin.errors import cli


def add_inspect_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="band statistics, and which band profile the pixels fit (and why)",
        description="Each band's statistics and the band order the pixels show (slope follows "
                    "the DEM's gradient, colour bands agree, gray mixes R, G, B and shows the "
                    "relief's shading, thermal is what is left), with a verdict on every known "
                    "profile.")
    parser.add_argument("path", metavar="PATH",
                        help="a tile or scene, or a folder of them (searched recursively)")
    parser.add_argument("--bands", help="the band profile you declare for these files "
                        f"({', '.join(bands.PROFILES)} or a channel list): exit 1 if the pixels "
                        "contradict it")
    parser.add_argument("--sample", type=int, default=64, metavar="N",
                        help="files read, spread evenly over the input (0 = all; default 64)")
    parser.set_defaults(run=inspect_command)


def inspect_command(args) -> int:
    from jaxswin.data import inspect

    declared = bands.resolve(args.bands) if args.bands else None
    files = inspect.input_files(args.path)
    report = inspect.inspect(inspect.read_sample(files, args.sample), declared)
    print(report.format(args.path))
    if declared is None:
        return 0
    return 1 if report.verdicts[inspect.profile_name(declared)].status == "contradicted" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxswin.data", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_inspect_parser(subparsers)
    return parser


@cli
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
