"""Spatial folds: no held-out tile touches a training tile (checked on the files' own footprints
or the grid in their names), folds balanced, positions from georeference or names, the CLI map."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import rasterio
import tifffile

from jaxswin import config as config_lib
from jaxswin.data import bands, folds, io, spatial, synthetic
from jaxswin.data.__main__ import main as data_main
from jaxswin.data.dataset import open_dataset, scan
from jaxswin.errors import ConfigError, DataError

SIZE = 8
PIXEL_M = 232.0
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def random_grid(rng, shape=(18, 20), keep=0.7):
    """Cells (row, col) of a random subset of a grid, with a random foreground level per
    region (so foreground is spatially clustered, as landslides are)."""
    cells = np.argwhere(rng.random(shape) < keep)
    level = rng.random((shape[0] // 3 + 1, shape[1] // 3 + 1))
    fractions = level[cells[:, 0] // 3, cells[:, 1] // 3] * rng.uniform(0.5, 1.0, len(cells))
    return cells, fractions


def write_mask(path, fraction, rng, transform=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = (rng.random((1, SIZE, SIZE)) < fraction).astype(np.uint8)
    if transform is None:  # no georeference, as MMLS v1's tifffile stacks
        tifffile.imwrite(path, mask[0])
        return
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8",
                       transform=transform, crs="IAU_2015:49910") as dst:
        dst.write(mask)


def write_tile(root, split, name, transform, fraction, rng):
    """A random 7-band GeoTIFF tile and its mask, at `transform`."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    with rasterio.open(root / split / "images" / f"t{name}.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=7, dtype="float32",
                       transform=transform, crs="IAU_2015:49910") as dst:
        dst.write(rng.random((7, SIZE, SIZE), dtype=np.float32))
    write_mask(root / split / "masks" / f"t{name}.tif", fraction, rng, transform)


@pytest.fixture(scope="module")
def georeferenced(tmp_path_factory):
    """GeoTIFF tiles on a random grid with a random origin, named in random order (the names
    say nothing of the position)."""
    rng = np.random.default_rng()
    root = tmp_path_factory.mktemp("georef")
    cells, fractions = random_grid(rng)
    x0, y0 = rng.uniform(-6e6, 6e6), rng.uniform(-3e6, 3e6)
    step = SIZE * PIXEL_M
    for i, name in enumerate(rng.permutation(len(cells))):
        row, col = cells[i]
        transform = rasterio.Affine(PIXEL_M, 0, x0 + col * step, 0, -PIXEL_M, y0 - row * step)
        split = "train" if rng.random() < 0.8 else "val"
        write_tile(root, split, name, transform, fractions[i], rng)
    return scan(root, bands.CHANNELS, SIZE)


def footprints(dataset, rows):
    """Bounds (left, bottom, right, top) in metres of the tiles at dataset rows `rows`."""
    if not hasattr(dataset, "_bounds"):
        bounds = []
        for sample in dataset.samples:
            with rasterio.open(sample.image) as src:
                bounds.append(tuple(src.bounds))
        dataset._bounds = np.array(bounds)
    return dataset._bounds[np.asarray(rows, np.int64)]


def touching(boxes_a, boxes_b, tolerance):
    """Whether any box of a touches (shares an edge or a corner with) or overlaps any of b."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    apart_x = (a[..., 0] > b[..., 2] + tolerance) | (b[..., 0] > a[..., 2] + tolerance)
    apart_y = (a[..., 1] > b[..., 3] + tolerance) | (b[..., 1] > a[..., 3] + tolerance)
    return bool((~apart_x & ~apart_y).any())


def assert_balanced(dataset, held_out_sets, count_tolerance, foreground_tolerance):
    pool = np.concatenate(held_out_sets)
    fraction = {i: io.read_mask(dataset.samples[i].mask, None).mean() for i in pool}
    overall = np.mean(list(fraction.values()))
    sizes = np.array([len(h) for h in held_out_sets])
    assert np.abs(sizes / sizes.mean() - 1).max() <= count_tolerance, sizes
    means = np.array([np.mean([fraction[i] for i in h]) for h in held_out_sets])
    assert np.abs(means - overall).max() <= foreground_tolerance, (means, overall)


def split_all(dataset, num_folds=5, seed=42, **options):
    """(train, held-out) of every fold, as folds.split gives them (one plan for all)."""
    plan = spatial.plan(dataset, dataset.indices(*folds.CV_SPLITS), num_folds, seed, **options)
    return [plan.split(k)[:2] for k in range(num_folds)]


@pytest.mark.parametrize("block_size,buffer", [(2, 1), (3, 1), (3, 2)])
def test_georeferenced_held_out_tiles_never_touch_training_tiles(georeferenced, block_size, buffer):
    splits = split_all(georeferenced, block_size=block_size, buffer=buffer)
    pool = set(georeferenced.indices("train", "val").tolist())
    held_all = []
    for train, held in splits:
        assert len(held) and len(train) and not set(train) & set(held)
        tile_m = SIZE * PIXEL_M
        # Boxes grown by buffer - 1 tiles must still not touch: the buffer is `buffer` tiles wide.
        assert not touching(footprints(georeferenced, held), footprints(georeferenced, train),
                            tolerance=(buffer - 1) * tile_m + 1.0)
        # ... and the buffer is no wider than asked: every dropped tile is within it.
        dropped = sorted(pool - set(train) - set(held))
        for i in dropped:
            assert touching(footprints(georeferenced, [i]), footprints(georeferenced, held),
                            tolerance=(buffer - 1) * tile_m + 1.0)
        held_all += held.tolist()
    assert sorted(held_all) == sorted(pool)  # every tile held out exactly once


def test_folds_are_balanced_and_deterministic(georeferenced):
    splits = split_all(georeferenced, block_size=2)
    assert_balanced(georeferenced, [h for _, h in splits], count_tolerance=0.1,
                    foreground_tolerance=0.03)
    again = split_all(georeferenced, block_size=2)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    other = [held for _, held in split_all(georeferenced, seed=7, block_size=2)]
    assert any(not np.array_equal(a[1], b) for a, b in zip(splits, other))


def test_balance_beats_dealing_blocks_at_random():
    rng = np.random.default_rng()
    counts = rng.integers(1, 17, 40)
    foreground = counts * rng.beta(0.5, 0.8, 40)
    fold_of = spatial.balance(counts, foreground, 5, seed=int(rng.integers(1000)))
    per_fold = np.bincount(fold_of, counts, 5)
    assert np.abs(per_fold / per_fold.mean() - 1).max() < 0.05
    fg = np.bincount(fold_of, foreground, 5)
    assert np.abs(fg / fg.mean() - 1).max() < 0.05


def test_synthetic_tiles_lie_on_their_georeferenced_grid(tmp_path):
    root = synthetic.generate(tmp_path, num_train=24, num_val=8, size=16)
    dataset = scan(root, bands.PROFILES["pbvs2026"], 16)
    boxes, source = spatial.tile_boxes(dataset.samples)
    cells = spatial.tile_cells(boxes)
    index = np.array([int(s.id.split("_")[1]) for s in dataset.samples])
    assert source == "georeference"
    assert np.array_equal(cells, np.stack([index // 16, index % 16], axis=1))


def write_named_grid(root, names, cells, fractions, rng):
    """Tiles named by `names` (without a georeference: a tifffile stack as MMLS v1 writes)."""
    for name, (row, col), fraction in zip(names, cells, fractions):
        path = root / "train" / "images" / f"Image_{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, rng.random((SIZE, SIZE, 7), dtype=np.float32))
        write_mask(root / "train" / "masks" / f"Mask_{name}.tif", fraction, rng)
    return scan(root, bands.CHANNELS, SIZE)


@pytest.mark.parametrize("style,pattern", [
    ("patch_{row}_{col}", ""),                       # MMLS v1
    ("col{col:05d}_row{row:05d}", ""),               # MMLSv2
    ("scene-r{row}-c{col}", r"r(?P<row>\d+)-c(?P<col>\d+)"),  # a user's own names
])
def test_name_grids_give_folds_no_held_out_tile_touches(tmp_path, style, pattern):
    rng = np.random.default_rng()
    cells, fractions = random_grid(rng, (12, 15))
    offset = rng.integers(0, 50, 2)
    names = [style.format(row=r + offset[0], col=c + offset[1]) for r, c in cells]
    dataset = write_named_grid(tmp_path, names, cells, fractions, rng)
    boxes, source = spatial.tile_boxes(dataset.samples, pattern)
    found = spatial.tile_cells(boxes)
    assert source == "file names"
    by_name = dict(zip(names, map(tuple, cells)))
    assert [tuple(c) for c in found] == [by_name[s.id] for s in dataset.samples]
    for train, held in split_all(dataset, block_size=2, grid_pattern=pattern):
        held_cells, train_cells = found[held], found[train]
        # Chebyshev distance between every held-out and every training tile, by the names' grid.
        distance = np.abs(held_cells[:, None, :] - train_cells[None, :, :]).max(axis=-1)
        assert distance.min() >= 2


def test_names_without_a_grid_and_bad_options_are_clear_errors(tmp_path):
    rng = np.random.default_rng()
    dataset = write_named_grid(tmp_path, ["a_1_2", "b_3_4", "nogrid", "c_5_6", "d_7_8"],
                               [(0, 0)] * 5, [0.5] * 5, rng)
    with pytest.raises(DataError, match="'nogrid'.*data.grid_pattern"):
        folds.split(dataset, 0, 2, 42, "spatial")
    with pytest.raises(ConfigError, match="named groups"):
        folds.split(dataset, 0, 2, 42, "spatial", grid_pattern=r"(\d+)_(\d+)")
    with pytest.raises(ConfigError, match="not a regular expression"):
        folds.split(dataset, 0, 2, 42, "spatial", grid_pattern="(?P<row>")
    with pytest.raises(ConfigError, match="data.folds"):
        folds.split(dataset, 0, 2, 42, "checkerboard")


def test_too_few_blocks_and_no_buffer_are_config_errors(georeferenced):
    with pytest.raises(ConfigError, match="data.block_size"):
        folds.split(georeferenced, 0, 5, 42, "spatial", block_size=50)
    with pytest.raises(ConfigError, match="data.buffer"):
        folds.split(georeferenced, 0, 5, 42, "spatial", buffer=0)
    with pytest.raises(ConfigError, match="data.block_size"):
        folds.split(georeferenced, 0, 5, 42, "spatial", block_size=0)


def test_split_for_reads_the_data_section(georeferenced):
    expected = split_all(georeferenced, block_size=2)[3]
    got = folds.split(georeferenced, 3, 5, 42, "spatial", block_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    cfg = config_lib.load("tiny", ["data.folds=spatial", "data.block_size=3", "data.buffer=2"])
    expected = folds.split(georeferenced, 1, 5, cfg.data.fold_seed, "spatial", block_size=3, buffer=2)
    got = folds.split_for(georeferenced, 1, cfg.data)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert folds.held_out_kind("spatial", 1) == "spatial fold"
    assert folds.held_out_kind("stratified", 1) == "random fold"
    assert folds.held_out_kind("spatial", "official") == "official split"


# ----------------------------------------------------------------------------- real data


def real(name, bands_spec):
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared real data sits beside the checkout)")
    # MMLSv2's test/ has no masks: the labelled train/ split alone is the pool.
    return open_dataset(root / "train" if name == "mmls_v2" else root, bands_spec)


@pytest.fixture(scope="module")
def mmls_v1():
    return real("mmls_v1", "mmlsv1")


@pytest.fixture(scope="module")
def mmls_v2():
    return real("mmls_v2", "pbvs2026")


def test_mmls_v1_spatial_folds_from_the_names(mmls_v1):
    pool = mmls_v1.indices("train", "val")
    plan = spatial.plan(mmls_v1, pool, 5, 42)
    assert plan.source == "file names" and len(pool) == 306
    row_col = {s.id: s.id.split("_")[1:] for s in mmls_v1.samples}
    for i, tile in enumerate(pool):  # patch_R_C: row R, column C (from the smallest)
        r, c = map(int, row_col[mmls_v1.samples[tile].id])
        assert (plan.rows[i] + 7, plan.cols[i]) == (r, c)
    held_out_sets = []
    for k in range(5):
        train, held, dropped = plan.split(k)
        cells = np.stack([plan.rows, plan.cols], 1)
        position = {t: n for n, t in enumerate(pool)}
        distance = np.abs(cells[[position[t] for t in held]][:, None]
                          - cells[[position[t] for t in train]][None]).max(-1)
        assert distance.min() >= 2
        assert len(train) + len(held) + len(dropped) == 306
        held_out_sets.append(held)
    assert_balanced(mmls_v1, held_out_sets, count_tolerance=0.05, foreground_tolerance=0.02)


def test_mmls_v2_spatial_folds_from_the_georeference(mmls_v2):
    pool = mmls_v2.indices("train")
    plan = spatial.plan(mmls_v2, pool, 5, 42)
    assert plan.source == "georeference" and len(pool) == 465
    # The georeferenced grid is the grid of the names (colX_rowY), but for the scene's last row,
    # which its tiler shifted to end at the scene's edge: those tiles overlap the row above.
    by_name = spatial.named_cells([mmls_v2.samples[i].id for i in pool])
    differ = (np.stack([plan.rows, plan.cols], 1) != by_name).any(axis=1)
    assert differ.sum() <= 4 and np.all(by_name[differ, 0] == by_name[:, 0].max())
    assert np.all(plan.boxes[differ, 0] < by_name[differ, 0])  # shifted north, overlapping
    held_out_sets = []
    for k in range(5):
        train, held, _ = plan.split(k)
        assert not touching(footprints(mmls_v2, held), footprints(mmls_v2, train), tolerance=1.0)
        held_out_sets.append(held)
    assert_balanced(mmls_v2, held_out_sets, count_tolerance=0.05, foreground_tolerance=0.02)


# ----------------------------------------------------------------------------- command line


def test_cli_prints_the_fold_map_and_writes_a_png(georeferenced, tmp_path, capsys):
    root = str(georeferenced.root)
    assert data_main(["folds", root, "--bands", ",".join(bands.CHANNELS), "--folds", "spatial",
                      "--block-size", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    plan = spatial.plan(georeferenced, georeferenced.indices("train", "val"), 5, 42, 3)
    grid = spatial.fold_map(plan.rows, plan.cols, plan.folds.astype(str))
    assert out[1:1 + len(grid)] == grid
    assert set("".join(grid)) <= set("01234.") and "spatial folds" in out[0]
    table = out[2 + len(grid):]
    assert [int(line.split()[1]) for line in table] == [s["held_out"] for s in plan.summary()]
    assert [int(line.split()[4]) for line in table] == [s["dropped"] for s in plan.summary()]

    png = tmp_path / "map.png"
    assert data_main(["folds", root, "--bands", ",".join(bands.CHANNELS), "--folds", "spatial",
                      "--png", str(png)]) == 0
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and min(image.shape[:2]) > 100

    assert data_main(["folds", root, "--bands", ",".join(bands.CHANNELS)]) == 0
    out = capsys.readouterr().out
    assert "random folds" in out


def test_cli_random_folds_of_a_small_area_need_no_spatial_blocks(tmp_path, capsys):
    # 40 tiles on 5 x 8 cells: 4 blocks of 4 x 4 tiles, too few for 5 spatial folds, which
    # random folds never use.
    rng = np.random.default_rng(7)
    step = SIZE * PIXEL_M
    for row, col in np.ndindex(5, 8):
        transform = rasterio.Affine(PIXEL_M, 0, col * step, 0, -PIXEL_M, -row * step)
        write_tile(tmp_path, "train", f"{row}_{col}", transform, rng.random(), rng)
    profile = ",".join(bands.CHANNELS)
    assert data_main(["folds", str(tmp_path), "--bands", profile]) == 0
    out = capsys.readouterr().out
    assert "5 random folds over 40 tiles" in out and len(out.splitlines()) == 1 + 5 + 1 + 5
    with pytest.raises(SystemExit) as exit_info:
        data_main(["folds", str(tmp_path), "--bands", profile, "--folds", "spatial"])
    assert exit_info.value.code == 2 and "use smaller blocks" in capsys.readouterr().err


def test_cli_warnings_show_as_the_other_tools_show_them(tmp_path, capsys):
    rng = np.random.default_rng(8)
    step = SIZE * PIXEL_M
    for row, col in np.ndindex(2, 5):
        transform = rasterio.Affine(PIXEL_M, 0, col * step, 0, -PIXEL_M, -row * step)
        write_tile(tmp_path, "train" if row else "dev", f"{row}_{col}", transform, 0.5, rng)
    assert data_main(["folds", str(tmp_path), "--bands", ",".join(bands.CHANNELS),
                      "--num-folds", "2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path}: labelled split(s) dev (5 tiles) left unused")
    assert "WARNING" not in err and err.count("\n") == 1


@pytest.mark.parametrize("option, value, says", [
    ("--num-folds", "0", "--num-folds 0 is out of range: allowed [2, inf)"),
    ("--num-folds", "1", "--num-folds 1 is out of range: allowed [2, inf)"),
    ("--seed", "-1", "--seed -1 is out of range: allowed [0, inf)"),
    ("--png", "map.txt", "map.txt: the map is written as a PNG; give a name ending in .png"),
])
def test_cli_bad_values_are_refused_before_reading(georeferenced, tmp_path, capsys, option, value,
                                                   says):
    value = str(tmp_path / value) if option == "--png" else value
    with pytest.raises(SystemExit) as exit_info:
        data_main(["folds", str(georeferenced.root), "--bands", ",".join(bands.CHANNELS), option,
                   value])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert says in err and not list(tmp_path.iterdir())


def test_cli_bad_option_is_one_line_and_exit_2(georeferenced, capsys):
    with pytest.raises(SystemExit) as exit_info:
        data_main(["folds", str(georeferenced.root), "--bands", ",".join(bands.CHANNELS),
                   "--folds", "spatial", "--block-size", "40"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.block_size=40") and "\n" not in err
