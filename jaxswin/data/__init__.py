"""The data path: GeoTIFF tiles on disk -> normalised, augmented, per-process batches.

    dataset = open_dataset(cfg.data.root, cfg.data.bands)      # None/"" = the synthetic set
    images, masks = dataset.load()                             # percentile-scaled, cached
    train_idx, val_idx = folds.split(dataset, fold)            # or fold="official"
    stats = Stats.fit(images[train_idx], masks[train_idx])     # stats.save(run / "stats.json")
    for batch in loader.train_loader(images, masks, train_idx, stats, global_batch_size=16,
                                     seed=0, epoch=epoch):
        ...  # {"rgb", "aux", "mask"}: float32 NHWC numpy arrays, this process's rows
    for batch in loader.eval_loader(images, masks, val_idx, stats, batch_size=32):
        ...  # the same plus "weight" (0 for padding rows)

Modules: bands (channel names, profiles), io (reading tiles and masks), dataset (layouts,
pairing), normalize (P1-P99 scaling, z-score stats), augment (Table 4), folds, loader (grain),
synthetic (the embedded dataset), inspect (band statistics and the band check).
"""

from jaxswin.data import augment, bands, folds, inspect, io, loader, normalize, synthetic
from jaxswin.data.dataset import Dataset, Sample, open_dataset
from jaxswin.data.normalize import Stats, percentile_scale, split_streams

__all__ = [
    "Dataset",
    "Sample",
    "Stats",
    "augment",
    "bands",
    "folds",
    "inspect",
    "io",
    "loader",
    "normalize",
    "open_dataset",
    "percentile_scale",
    "split_streams",
    "synthetic",
]
