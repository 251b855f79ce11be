"""Data tools: ``python -m jaxswin.data SUBCOMMAND ...``.

    python -m jaxswin.data inspect PATH [--bands PROFILE]   band statistics and band order

A thin dispatcher: each subcommand is one ``add_<name>`` (its arguments) and one ``run_<name>``
(a call into the module that does the work).
"""

from __future__ import annotations

import argparse

from jaxswin.data import bands
from jaxswin.data import inspect as inspect_lib
from jaxswin.errors import cli


def add_inspect(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="band statistics, and which band profile the pixels fit (with the evidence)",
        description="Prints each band's statistics and the band order the pixels show (slope "
        "follows the DEM's gradient, colour bands agree, gray mixes R, G, B and shows the "
        "relief's shading, thermal is what is left), with a verdict on every known profile.",
    )
    parser.add_argument("path", help="a tile or scene, or a folder of them (searched recursively)")
    parser.add_argument("--bands", help="the band profile you declare for these files "
                        f"({', '.join(bands.PROFILES)} or a channel list): exit 1 unless it fits")
    parser.add_argument("--sample", type=int, default=64, metavar="N",
                        help="files read, spread evenly over the input (0 = all; default 64)")
    parser.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    declared = bands.resolve(args.bands) if args.bands else None
    files = inspect_lib.input_files(args.path)
    report = inspect_lib.inspect(inspect_lib.read_sample(files, args.sample), declared)
    print(report.format(args.path))
    if declared is None:
        return 0
    return 0 if report.verdicts[inspect_lib.profile_name(declared)].status != "contradicted" else 1


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxswin.data",
                                     description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    add_inspect(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
