"""Landslide maps from trained runs (paper §4.2): every model x every TTA view, averaged.

    python -m jaxswin.predict --checkpoint RUN [RUN ...] --input FILE|DIR --output DIR

RUN is any folder jaxswin.train writes: a ``best/`` folder (model.safetensors, config.toml,
stats.json), a fold folder holding ``best/`` (RUN/fold<k>, RUN/official), or a training workdir
(all its ``fold<k>/best``, else its ``official/best``). The input is read with the band profile
the models were trained on unless ``--bands`` says otherwise; channels are matched by name.

The engine (windows, nodata, blending, the compiled ensemble) is jaxswin.inference; the files
(Cloud-Optimized GeoTIFFs, polygons, quick-looks) jaxswin.maps. Per input, under --output:
NAME (mask: uint8 1/0, 255 nodata), prob/NAME (``--save-prob``), polygons/STEM.gpkg
(``--polygons``), preview/STEM.png (``--preview``), and metrics.json with ``--masks``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import threading
from pathlib import Path

import jax

from jaxswin import cli as cli_lib
from jaxswin import console, evaluate, inference, maps, metrics, runtime, tta
from jaxswin.data import bands, inspect, io
from jaxswin.errors import DataError, RunStopped, UserError, cli

log = logging.getLogger("jaxswin.predict")


class Terminated(RunStopped):
    """SIGTERM: the run stops with the status a shell gives a terminated process."""

    exit_code = 128 + signal.SIGTERM
    prefix = "stopped"


def _terminate(signum, frame):
    raise Terminated("SIGTERM: the maps finished so far are kept, no temporary file is left")


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM raises Terminated, as Ctrl-C raises KeyboardInterrupt, so that the run's
    `finally` removes its temporaries (by default SIGTERM ends the process on the spot)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(input_arg: Path, output: Path, targets: dict[Path, maps.Targets]) -> None:
    """Nothing may be written inside --input, nor over an input (links resolved); the output
    folders must be folders or makeable, the output files not folders."""
    if input_arg.is_dir() and _inside(output.resolve(), input_arg.resolve()):
        raise UserError(
            f"--output {output}: is inside --input {input_arg}; choose a separate folder"
        )
    outputs = [t for paths in targets.values() for t in paths.all()]
    # Checked before any model is loaded: a file in the way would stop the run at mkdir.
    for folder in {output, *(t.parent for t in outputs)}:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(
                f"--output {output}: {existing} is a file, so the folder {folder} cannot be "
                "made; move the file away or choose another --output"
            )
    sources = {source.resolve(): source for source in targets}
    for target in outputs:
        if target.is_dir():
            raise UserError(
                f"--output {output}: {target} is a folder, where an output file goes; move it "
                "away or choose another --output"
            )
        if target.resolve() in sources:
            raise UserError(
                f"--output {output}: writing {target} would overwrite the input "
                f"{sources[target.resolve()]}; choose a separate folder"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = cli_lib.parser(
        "jaxswin.predict",
        "Landslide maps from trained runs: models x TTA views averaged, thresholded, "
        "written as Cloud-Optimized GeoTIFFs with the input's georeferencing.",
        epilog=cli_lib.band_profiles(),
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="RUN",
                        help="best/ folder, fold folder (fold<k>, official) or training workdir")
    parser.add_argument("--input", required=True, help="a GeoTIFF tile or scene, or a folder")
    parser.add_argument("--output", required=True, help="folder for the masks (not inside --input)")
    parser.add_argument("--tta", choices=tta.NAMES, help="views (default: the config's, rot4)")
    parser.add_argument("--threshold", type=float, help="probability cut (default: config, 0.51)")
    parser.add_argument("--bands", help="band profile of the input (see below; default: the "
                                        "training profile)")
    parser.add_argument("--band-check", choices=inspect.MODES,
                        help="a band profile the pixels contradict: stop (error), warn and go on, "
                        "or skip the check (off) (default: the run's data.band_check)")
    parser.add_argument("--save-prob", action="store_true", help="also write probabilities")
    parser.add_argument("--prob-dtype", choices=maps.PROB_DTYPES, default="uint8",
                        help="stored probabilities: uint8 round(254 p), 255 nodata (default), or "
                        "float32 exact values, NaN nodata")
    parser.add_argument("--polygons", action="store_true",
                        help="also write the landslides as a GeoPackage layer (polygons/STEM.gpkg)")
    parser.add_argument("--min-area", type=float, default=0.0, metavar="M2",
                        help="drop polygons smaller than this ground area in m² (default 0)")
    parser.add_argument("--preview", action="store_true", help="also write quick-look PNGs")
    parser.add_argument("--masks", help="folder of ground-truth masks: also score the predictions")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch-size", type=int, help="tiles per call (default: config, 32)")
    parser.add_argument("--precision", choices=["auto", *runtime.PRECISIONS],
                        help="compute precision of the models (default: config, fp32; auto = bf16 "
                        "on recent GPUs, fp32 on CPU)")
    return parser


def plan_targets(inputs: list[Path], output: Path, args) -> dict[Path, maps.Targets]:
    """Every input's output files; two inputs may not share one (t.tif and t.tiff share
    polygons/t.gpkg and preview/t.png)."""
    targets = {
        path: maps.Targets(
            mask=output / path.name,
            prob=output / "prob" / path.name if args.save_prob else None,
            polygons=output / "polygons" / f"{path.stem}.gpkg" if args.polygons else None,
            preview=output / "preview" / f"{path.stem}.png" if args.preview else None,
        )
        for path in inputs
    }
    writer_of: dict[Path, Path] = {}
    for path, paths in targets.items():
        for target in paths.all():
            other = writer_of.setdefault(target, path)
            if other != path:
                raise UserError(
                    f"--input: {other} and {path} would both be written to {target}; rename "
                    "one of them (or map them into separate --output folders)"
                )
    return targets


def list_inputs(input_arg: Path) -> list[Path]:
    if input_arg.is_dir():
        return io.list_tiles(input_arg)
    if input_arg.is_file():
        return [input_arg]
    raise UserError(f"--input {input_arg}: no such file or folder")


@cli
def main(argv=None):
    with sigterm_stops():
        map_inputs(build_parser().parse_args(argv))


def map_inputs(args) -> None:
    cpu_flags = runtime.use_cpu_flags()  # before anything starts JAX's backends
    console.setup()
    runtime.report_cpu_flags(cpu_flags)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold {args.threshold}: must be a probability in [0, 1]")
    if not 0 <= args.min_area < math.inf:  # NaN too: it compares false
        raise UserError(f"--min-area {args.min_area}: must be an area in m², at least 0")
    runtime.enable_compilation_cache()

    input_arg, output = Path(args.input), Path(args.output)
    inputs = list_inputs(input_arg)
    targets = plan_targets(inputs, output, args)
    check_output(input_arg, output, targets)
    metrics_file = output / "metrics.json"
    existing = [t for paths in targets.values() for t in paths.all() if t.exists()]
    existing += [metrics_file] if args.masks and metrics_file.exists() else []
    if existing and not args.overwrite:
        raise UserError(
            f"--output {output}: {len(existing)} output file(s) exist already "
            f"(e.g. {existing[0]}); pass --overwrite to replace them"
        )
    truth = {}
    if args.masks:
        if not Path(args.masks).is_dir():
            raise UserError(f"--masks {args.masks}: no such folder; give the folder of the "
                            "ground-truth masks")
        by_id = evaluate.tiles_by_id(args.masks)
        truth = dict(evaluate.pair({io.tile_id(p): p for p in inputs}, by_id, args.masks))

    members = [
        inference.load_member(folder)
        for run in args.checkpoint
        for folder in inference.best_folders(run)
    ]
    if args.bands:
        channels = bands.resolve(args.bands)
    elif (channels := inference.trained_profile(members)) is None:
        trained = ", ".join(sorted({m.config.data.bands for m in members}))
        raise UserError(f"--bands: the models were trained on different band profiles "
                        f"({trained}); say which one the input uses")
    # Before the models are built: a contradicted profile stops at once, naming the right one.
    inspect.check(inputs, channels, args.band_check or members[0].config.data.band_check,
                  f"the files of --input {input_arg}", option="--band-check")
    check_mask_sizes(truth, channels, args.masks)
    ensemble = inference.Ensemble(
        members, args.tta, args.batch_size, args.precision, args.threshold
    )
    log.info(
        f"{len(members)} model(s) x {len(ensemble.views)} view(s) ({ensemble.tta_name}), "
        f"tile {ensemble.tile}, {ensemble.precision}, threshold {ensemble.threshold}, "
        f"{len(inputs)} input(s), {jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    for sub in {t.parent for paths in targets.values() for t in paths.all()}:
        sub.mkdir(parents=True, exist_ok=True)

    writers: list[maps.MapWriter] = []

    def make_sink(path: Path, reader: io.SceneReader) -> maps.MapWriter:
        if args.polygons and args.min_area > 0 and reader.georef["crs"] is None:
            log.warning(f"{path}: no CRS, so no areas in m²: --min-area is not applied")
        writers.append(maps.MapWriter(
            targets[path], reader.georef, ensemble.threshold, args.prob_dtype, args.min_area
        ))
        return writers[-1]

    sources = [(path, lambda path=path: io.SceneReader(path, channels)) for path in inputs]
    counts = []
    try:
        with maps.gdal_env():
            mapped = ensemble.stream(sources, make_sink)
            for path, written in console.progress(
                iterable=mapped, total=len(inputs), unit="file"
            ):
                report(path, written, targets[path], channels, truth.get(path), counts)
    finally:
        for writer in writers:
            writer.discard()  # temporaries of a run cut short
    log.info(f"wrote {len(inputs)} mask(s) to {output}")
    if counts:
        scores = {**metrics.summarize(counts), "tiles": len(counts)}
        metrics_file.write_text(json.dumps(scores, indent=2) + "\n")
        print(evaluate.format_table(scores))


def check_mask_sizes(truth: dict[Path, Path], channels, masks_arg) -> None:
    """Before any map is written: every --masks file has its input's size (else the scoring
    would stop midway, with some masks written)."""
    for path, mask_path in truth.items():
        with io.SceneReader(path, channels) as reader:
            size = (reader.height, reader.width)
        mask_size = io.read_mask(mask_path, size=None).shape
        if mask_size != size:
            raise DataError(
                f"--masks {masks_arg}: {mask_path} is {mask_size[0]}x{mask_size[1]} pixels but "
                f"its input {path} is {size[0]}x{size[1]}; give each input the mask of its own "
                "tile, of the same size"
            )


def report(path, written, targets: maps.Targets, channels, truth_path, counts) -> None:
    """After one input is mapped: its nodata and polygons said, scored, previewed."""
    nodata = written["pixels"] - written["valid"]
    if nodata:
        log.info(f"{path}: {nodata} nodata pixel(s) (255 in the mask)")
    truth = io.read_mask(truth_path, size=None) if truth_path is not None else None
    if truth is not None:
        pred = io.read_mask(targets.mask, size=None)  # nodata (255) scores as background
        counts.append(evaluate.tile_counts(pred, truth, str(path)))
    if targets.preview is not None:
        with io.SceneReader(path, channels) as reader:
            maps.write_preview(targets.preview, reader, targets.mask, truth)


if __name__ == "__main__":
    main()
