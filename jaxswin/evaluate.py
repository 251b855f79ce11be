"""Scores of predicted masks against ground truth.

    python -m jaxswin.evaluate --pred DIR --masks DIR [--json]


Files pair by tile id (``Image_12.tif``, ``Mask_12.tif`` and ``12.tif`` are all tile 12). The
scores are counted over all pixels of the set, as the MARS-LS challenge does: mIoU is the mean
of the foreground and background IoU of the pooled counts (see jaxswin.metrics for the
empty-class convention), not a mean over tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxswin import cli as cli_lib
from jaxswin import console, metrics
from jaxswin.data import io
from jaxswin.errors import DataError, cli

LABELS = {
    "miou": "mIoU",
    "iou_fg": "IoU_fg",
    "iou_bg": "IoU_bg",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "accuracy": "Accuracy",
}


def tiles_by_id(folder: str | Path) -> dict[str, Path]:
    """Tile id -> file of every tile in `folder` (two files of one id are an error)."""
    found: dict[str, Path] = {}
    for path in io.list_tiles(folder):
        tile = io.tile_id(path)
        if tile in found:
            raise DataError(f"{folder}: {found[tile].name} and {path.name} are both tile '{tile}'")
        found[tile] = path
    return found


def missing(option: str, folder, what: str, tiles) -> DataError:
    """The error for tiles lacking their counterpart, listing (the first few of) them."""
    tiles = sorted(tiles)
    shown = ", ".join(tiles[:10]) + (f" and {len(tiles) - 10} more" if len(tiles) > 10 else "")
    return DataError(f"{option} {folder}: no {what} for {len(tiles)} tile(s): {shown}")


def pair(pred: dict[str, Path], truth: dict[str, Path], masks_dir) -> list[tuple[Path, Path]]:
    """(prediction, mask) paths by tile id; a prediction without its mask is an error."""
    if set(pred) - set(truth):
        raise missing("--masks", masks_dir, "mask", set(pred) - set(truth))
    return [(pred[tile], truth[tile]) for tile in sorted(pred)]


def tile_counts(pred: np.ndarray, truth: np.ndarray, where: str) -> np.ndarray:
    """[tp, fp, fn, tn] of one tile's 0/1 prediction and mask."""
    if pred.shape != truth.shape:
        raise DataError(f"{where}: prediction is {pred.shape} pixels but its mask is {truth.shape}")
    return np.asarray(metrics.confusion(pred[None] > 0, truth[None] > 0), np.float64)


def evaluate(pred_dir: str | Path, masks_dir: str | Path) -> dict[str, float]:
    """Scores of every mask in `pred_dir` against its ground truth in `masks_dir`."""
    pred, truth = tiles_by_id(pred_dir), tiles_by_id(masks_dir)
    if not pred:
        raise DataError(f"--pred {pred_dir}: no predicted masks (GeoTIFF files) found")
    if set(truth) - set(pred):  # the set's scores must cover the whole set
        raise missing("--pred", pred_dir, "prediction", set(truth) - set(pred))
    counts = [
        tile_counts(io.read_mask(p, size=None), io.read_mask(m, size=None), str(p))
        for p, m in pair(pred, truth, masks_dir)
    ]
    return {**metrics.summarize(counts), "tiles": len(counts)}


def format_table(scores: dict) -> str:
    lines = [f"{LABELS[key]:<10} {scores[key]:.4f}" for key in metrics.KEYS]
    return "\n".join([f"{'tiles':<10} {scores['tiles']}", *lines])


@cli
def main(argv=None):
    parser = cli_lib.parser(
        "jaxswin.evaluate", "Scores of predicted masks against ground-truth masks, over all pixels."
    )
    parser.add_argument("--pred", required=True, help="folder of predicted 0/1 masks")
    parser.add_argument("--masks", required=True, help="folder of ground-truth masks")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)
    console.setup()  # the data readers' warnings (skipped files) through the one logging path
    scores = evaluate(args.pred, args.masks)
    print(json.dumps(scores, indent=2) if args.json else format_table(scores))


if __name__ == "__main__":
    main()
