"""Dataset tools: ``python -m jaxswin.data SUBCOMMAND``.

    python -m jaxswin.data inspect PATH [--bands PROFILE]   # band statistics and band order
    python -m jaxswin.data folds DATA --folds spatial [--png folds.png]   # the fold map

One function per subcommand; each only parses its options and calls into the data modules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxswin import cli as cli_lib
from jaxswin import config as config_lib
from jaxswin import console
from jaxswin.data import bands, folds
from jaxswin.errors import UserError, cli




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


def add_folds_parser(subparsers) -> None:
    defaults = config_lib.DataConfig()
    parser = subparsers.add_parser(
        "folds", help="print the cross-validation fold map of a dataset (or write it as a PNG)",
        description="Where each fold's held-out tiles lie on the ground, as a character grid "
                    "(one character per tile: its fold; '.' no labelled tile), with each fold's "
                    "tile count, foreground fraction and (spatial folds) buffer.")
    parser.add_argument("data", metavar="DATA", help="dataset root")
    parser.add_argument("--bands", default=defaults.bands,
                        help=f"band profile of the files (default: {defaults.bands})")
    parser.add_argument("--folds", dest="method", default=defaults.folds,
                        choices=folds.METHODS,
                        help=f"how tiles are held out (default: {defaults.folds})")
    parser.add_argument("--num-folds", type=int, default=defaults.num_folds,
                        help=f"data.num_folds (default: {defaults.num_folds})")
    parser.add_argument("--seed", type=int, default=defaults.fold_seed, help="data.fold_seed")
    parser.add_argument("--block-size", type=int, default=defaults.block_size,
                        help=f"spatial: block side in tiles (default: {defaults.block_size})")
    parser.add_argument("--buffer", type=int, default=defaults.buffer,
                        help=f"spatial: buffer in tiles (default: {defaults.buffer})")
    parser.add_argument("--grid-pattern", default=defaults.grid_pattern,
                        help="regex with (?P<row>\\d+) and (?P<col>\\d+) reading grid positions "
                             "from tile names (default: the georeference, else colX_rowY, "
                             "rowY_colX or ..._R_C)")
    parser.add_argument("--png", help="write the map to this PNG instead of printing the grid")
    parser.set_defaults(run=folds_command)


def folds_command(args) -> int:
    from jaxswin.data import dataset as dataset_lib
    from jaxswin.data import spatial

    # The checks a run's config gets, named as the options given here.
    for option, key, value in (("--num-folds", "data.num_folds", args.num_folds),
                               ("--seed", "data.fold_seed", args.seed),
                               ("--block-size", "data.block_size", args.block_size),
                               ("--buffer", "data.buffer", args.buffer)):
        config_lib.check_range(key, value, f"{option} {value}")
    if args.png and Path(args.png).suffix.lower() != ".png":
        raise UserError(f"--png {args.png}: the map is written as a PNG; give a name ending "
                        "in .png")
    dataset = dataset_lib.open_dataset(args.data, args.bands)
    pool = dataset.indices(*folds.CV_SPLITS)
    if args.method == "spatial":
        plan = spatial.plan(dataset, pool, args.num_folds, args.seed, args.block_size,
                            args.buffer, args.grid_pattern)
    else:  # the same tiles, dealt as folds.split deals them
        dealt = folds.RANDOM_METHODS[args.method](dataset, pool, args.num_folds, args.seed)
        plan = spatial.random_plan(dataset, pool, dealt, args.num_folds, args.grid_pattern)
    kind = folds.held_out_kind(args.method, 0)
    title = (f"{dataset.root}: {args.num_folds} {kind}s over {len(pool)} tiles "
             f"(positions from {plan.source})")
    if args.method == "spatial":
        title += f", blocks of {args.block_size}x{args.block_size} tiles, buffer {args.buffer}"
    if args.png:
        try:
            spatial.save_png(args.png, plan.rows, plan.cols, plan.folds, args.num_folds, title)
        except OSError as err:
            raise UserError(f"--png {args.png}: cannot write it ({err.strerror or err})") from None
        print(f"wrote {args.png}: {title}")
        return 0
    print(title)
    symbols = np.array([str(k) if k < 10 else chr(ord("a") + k - 10) for k in plan.folds])
    print("\n".join(spatial.fold_map(plan.rows, plan.cols, symbols)))
    print("fold  held-out  foreground  training  dropped (buffer)")
    for row in plan.summary():
        print(f"{row['fold']:>4}  {row['held_out']:>8}  {row['foreground']:>10.3f}  "
              f"{row['train']:>8}  {row['dropped']:>7}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli_lib.parser("jaxswin.data", __doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_inspect_parser(subparsers)
    add_folds_parser(subparsers)
    return parser


@cli
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    console.setup()  # the readers' warnings as the other tools show them
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
