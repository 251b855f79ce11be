"""The data path: GeoTIFF tiles on disk -> normalised, augmented, sharded batches.

    dataset = open_dataset(cfg.data.root, cfg.data.bands)      # None/"" = synthetic
    images, masks = dataset.load()                             # percentile-scaled, cached
    train_idx, val_idx = folds.split(dataset, fold)
    stats = Stats.fit(images[train_idx], masks[train_idx])
    for batch in loader.train_loader(images, masks, train_idx, stats, global_batch_size=16,
                                     seed=0, epoch=epoch):
        ...  # {"rgb", "aux", "mask"} float32 NHWC numpy arrays, this process's rows
"""

from jaxswin.data import augment, bands, folds, io, loader, normalize, synthetic
from jaxswin.data.dataset import Dataset, Sample, open_dataset
from jaxswin.data.normalize import Stats, percentile_scale, split_streams

__all__ = [
    "Dataset",
    "Sample",
    "Stats",
    "augment",
    "bands",
    "folds",
    "io",
    "loader",
    "normalize",
    "open_dataset",
    "percentile_scale",
    "split_streams",
    "synthetic",
]
