"""The authors' recipe switches, each against an independent reference (numpy, scipy, known
values from sklearn 1.5.2): folds, per-tile Dice, channel dropout, AUX order, constant affine
border, sigma-drawn blur, the kept last partial batch, fixed-weight fusion, statistics rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxswin import config as config_lib
from jaxswin import losses
from jaxswin.data import augment, folds, loader
from jaxswin.data.normalize import Stats
from jaxswin.errors import ConfigError
from jaxswin.models import dualswin, fusion


# ---------------------------------------------------------------------------- folds

# Fold of the first 40 tiles, and fold sizes, of sklearn 1.5.2's
# KFold(n_splits=5, shuffle=True, random_state=42).split(range(n)).
SKLEARN_KFOLD = {
    10: ("1024314203", [2, 2, 2, 2, 2]),
    465: ("0421312130203430110044021013310130432220", [93, 93, 93, 93, 93]),
    531: ("0401310130003430110144011113310130432120", [107, 106, 106, 106, 106]),
}


@pytest.mark.parametrize("n", sorted(SKLEARN_KFOLD))
def test_kfold_is_sklearns_shuffled_kfold(n):
    head, sizes = SKLEARN_KFOLD[n]
    fold_of = folds.kfold(n, 5, 42)
    assert "".join(map(str, fold_of[: len(head)])) == head
    assert np.bincount(fold_of).tolist() == sizes


def test_kfold_matches_sklearn_when_installed():
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng()
    n, k, seed = int(rng.integers(20, 700)), int(rng.integers(2, 9)), int(rng.integers(1 << 30))
    fold_of = folds.kfold(n, k, seed)
    splitter = model_selection.KFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.arange(n))):
        assert np.array_equal(np.flatnonzero(fold_of == fold), np.sort(held_out))


class PathOrdered:
    """A dataset stand-in: train tiles then val tiles, as Dataset orders them."""

    root = "ROOT"

    def __init__(self, splits):
        self.splits_of = np.array(splits)

    def indices(self, *splits):
        return np.flatnonzero(np.isin(self.splits_of, splits))


def test_kfold_split_pools_train_then_val_and_stats_rows():
    dataset = PathOrdered(["train"] * 20 + ["val"] * 7 + ["test"] * 3)
    fold_of = folds.kfold(27, 5, 42)
    for k in range(5):
        train, val = folds.split(dataset, k, 5, 42, method="kfold")
        assert np.array_equal(val, np.flatnonzero(fold_of == k))
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(27))
        assert np.array_equal(folds.stats_rows(dataset, train, "fold"), train)
        assert np.array_equal(folds.stats_rows(dataset, train, "all"), np.arange(27))
    with pytest.raises(ConfigError, match="data.folds"):
        folds.split(dataset, 0, 5, 42, method="random")
    with pytest.raises(ConfigError, match="data.stats"):
        folds.stats_rows(dataset, train, "everything")


# ---------------------------------------------------------------------------- Dice per tile


def test_per_tile_dice_is_the_authors_formula():
    rng = np.random.default_rng()
    logits = rng.normal(0, 2, (5, 12, 12, 1)).astype(np.float32)
    mask = (rng.random((5, 12, 12, 1)) < rng.random((5, 1, 1, 1))).astype(np.float32)
    mask[2] = 0  # an all-background tile costs 1 whatever it predicts
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    per_tile = 2 * (p * mask).sum((1, 2, 3)) / (p.sum((1, 2, 3)) + mask.sum((1, 2, 3)) + 1e-7)
    dice = 1 - per_tile.mean()
    got = float(losses.get("dice", dice="per_tile")(logits, mask, 1.0))
    assert got == pytest.approx(dice, rel=1e-5)
    bce = np.mean(np.where(mask > 0, 2.5, 1.0) * (np.logaddexp(0, logits) - logits * mask))
    got = float(losses.get("bce_w_dice", dice="per_tile")(logits, mask, 2.5))
    assert got == pytest.approx(0.5 * bce + 0.5 * dice, rel=1e-5)
    batch = float(losses.get("dice")(logits, mask, 1.0))
    assert abs(batch - dice) > 1e-3  # the switch changes the loss
    with pytest.raises(ConfigError, match="train.dice"):
        losses.get("dice", dice="tile")


# ---------------------------------------------------------------------------- model switches


def dropout_output(kind, x, seed):
    head = dualswin.SegmentationHead(dropout=0.3, dropout_kind=kind)
    variables = head.init(jax.random.key(0), [x], (8, 8))
    _, state = head.apply(variables, [x], (8, 8), train=True,
                          rngs={"dropout": jax.random.key(seed)},
                          capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout),
                          mutable=["intermediates"])
    (out,) = jax.tree.leaves(state["intermediates"])
    return np.asarray(out)


def test_channel_dropout_zeroes_whole_maps_like_dropout2d():
    rng = np.random.default_rng()
    x = rng.uniform(0.5, 1.5, (4, 8, 8, 64)).astype(np.float32)
    out = dropout_output("channel", x, int(rng.integers(1 << 30)))
    kept = out != 0
    per_map = kept.transpose(0, 3, 1, 2).reshape(4, 64, 64)  # (tile, channel, pixels)
    assert np.all(per_map.all(-1) | ~per_map.any(-1))  # every map kept or dropped whole
    np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-6)
    assert 0.15 < 1 - per_map.all(-1).mean() < 0.45  # p = 0.3 of 256 maps
    element = dropout_output("element", x, 1) != 0
    element_maps = element.transpose(0, 3, 1, 2).reshape(4, 64, 64)
    assert not np.all(element_maps.all(-1) | ~element_maps.any(-1))


def test_aux_order_feeds_the_encoder_the_named_channels():
    rng = np.random.default_rng()
    aux = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
    cfg = config_lib.ModelConfig(aux_order=("dem", "slope", "thermal", "gray"))
    # canonical AUX is thermal, slope, dem, gray: the authors' order reads dem first
    np.testing.assert_array_equal(dualswin.order_aux(cfg, aux), aux[..., [2, 1, 0, 3]])
    assert dualswin.order_aux(config_lib.ModelConfig(), aux) is aux
    with pytest.raises(ConfigError, match="aux_order"):
        dualswin.validate(config_lib.ModelConfig(aux_order=("dem", "dem", "thermal", "gray")))


def test_fixed_weighted_sum_is_the_stated_blend():
    rng = np.random.default_rng()
    rgb = [rng.normal(size=(2, 4, 4, 8)).astype(np.float32)]
    aux = [rng.normal(size=(2, 4, 4, 8)).astype(np.float32)]
    w = float(rng.uniform())
    module = fusion.CrossModalFusion("weighted_sum_fixed", weight=w)
    variables = module.init(jax.random.key(0), rgb, aux)
    assert not jax.tree.leaves(variables)  # nothing to learn
    np.testing.assert_allclose(module.apply(variables, rgb, aux)[0], w * rgb[0] + (1 - w) * aux[0],
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- augmentation


def test_constant_border_warp_is_opencv_border_constant():
    rng = np.random.default_rng()
    n, size = 3, 24
    rgb = rng.random((n, size, size, 3), dtype=np.float32)
    aux = rng.random((n, size, size, 4), dtype=np.float32)
    mask = (rng.random((n, size, size, 1)) < 0.5).astype(np.float32)
    fill_rgb, fill_aux = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    matrices = np.stack([augment.sample_warp(rng, size, size) for _ in range(n - 1)] + [
        np.array([[0.8, 0.5, -3.0], [-0.5, 0.8, 6.0]], np.float32)])
    out = augment.warp({"rgb": rgb, "aux": aux, "mask": mask, "warp": matrices,
                        "fill_rgb": fill_rgb.astype(np.float32),
                        "fill_aux": fill_aux.astype(np.float32)})
    assert set(out) == {"rgb", "aux", "mask"}
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    for i, m in enumerate(matrices):
        for name, images, fill in (("rgb", rgb, fill_rgb), ("aux", aux, fill_aux)):
            for c in range(images.shape[-1]):
                # scipy's grid-constant pads with cval and interpolates, as OpenCV's constant
                expected = ndimage.affine_transform(
                    images[i, ..., c].astype(np.float64), m[:, :2].astype(np.float64),
                    offset=m[:, 2].astype(np.float64), order=1, mode="grid-constant",
                    cval=fill[i, c])
                np.testing.assert_allclose(out[name][i, ..., c], expected, atol=3e-5)
        src_r = np.round(m[0, 0] * rows + m[0, 1] * cols + m[0, 2]).astype(int)
        src_c = np.round(m[1, 0] * rows + m[1, 1] * cols + m[1, 2]).astype(int)
        inside = (src_r >= 0) & (src_r < size) & (src_c >= 0) & (src_c < size)
        expected_mask = np.where(inside, mask[i, np.clip(src_r, 0, size - 1),
                                              np.clip(src_c, 0, size - 1), 0], 0)
        np.testing.assert_array_equal(out["mask"][i, ..., 0], expected_mask)
    assert (np.asarray(out["mask"]) == 0).mean() > (mask == 0).mean()  # the border is empty


def test_loader_fills_the_constant_border_with_scaled_zero():
    rng = np.random.default_rng()
    images = rng.random((8, 16, 16, 7), dtype=np.float32)
    masks = np.ones((8, 16, 16), np.uint8)
    masks[0, 0, 0] = 0
    stats = Stats.fit(images, masks)
    batches = loader.train_loader(images, masks, np.arange(8), stats, global_batch_size=8,
                                  seed=1, epoch=0, workers=0, device_warp=True, border="constant")
    (batch,) = list(batches)
    zero = stats.apply(np.zeros(7, np.float32))
    np.testing.assert_allclose(batch["fill_rgb"], np.tile(zero[:3], (8, 1)), rtol=1e-6)
    np.testing.assert_allclose(batch["fill_aux"], np.tile(zero[3:], (8, 1)), rtol=1e-6)


def test_sigma_blur_draws_sigma_and_derives_the_kernel():
    rng = np.random.default_rng()
    draws = [augment.sample_blur(rng, "sigma") for _ in range(3000)]
    sigmas = np.array([s for _, s in draws])
    assert sigmas.min() >= 0.5 and sigmas.max() <= 3.0
    assert abs(sigmas.mean() - 1.75) < 0.05 and abs(sigmas.std() - 2.5 / 12**0.5) < 0.05
    assert all(k == int(3.5 * s) * 2 + 1 for k, s in draws)
    assert {augment.sample_blur(rng, "kernel")[0] for _ in range(200)} == {3, 5, 7}
    rgb = rng.random((30, 26, 3)).astype(np.float32)
    kernel, sigma = draws[0]
    taps = np.exp(-((np.arange(kernel) - (kernel - 1) / 2) ** 2) / (2 * sigma**2))
    taps /= taps.sum()  # cv2.getGaussianKernel(kernel, sigma)
    r = kernel // 2
    padded = np.pad(rgb.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(t * padded[i : i + rgb.shape[0]] for i, t in enumerate(taps))
    expected = sum(t * rows[:, i : i + rgb.shape[1]] for i, t in enumerate(taps))
    np.testing.assert_allclose(augment.gaussian_blur(rgb, kernel, sigma), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="data.blur"):
        augment.Augment(blur="box")


# ---------------------------------------------------------------------------- last batch


@pytest.mark.parametrize("multiple, last", [(1, 3), (2, 2), (4, 0)])
def test_kept_last_batch_holds_the_epochs_remaining_tiles(multiple, last):
    rng = np.random.default_rng()
    n = 23
    images = rng.random((n, 8, 8, 7), dtype=np.float32)
    masks = (rng.random((n, 8, 8)) < 0.4).astype(np.uint8)
    stats = Stats.fit(images, masks)
    z = stats.apply(images).reshape(n, -1)

    def tiles(batches):
        return [[int(np.argmin(np.abs(z - row).max(1))) for row in
                 np.concatenate([b["rgb"], b["aux"]], -1).reshape(len(b["rgb"]), -1)]
                for b in batches]

    def epoch(e, **kw):
        return list(loader.train_loader(images, masks, np.arange(n), stats, global_batch_size=4,
                                        seed=3, epoch=e, workers=0, augment=False,
                                        drop_last=False, row_multiple=multiple, **kw))

    assert loader.steps_per_epoch(n, 4, drop_last=False, row_multiple=multiple) == 5 + (last > 0)
    for e in (0, 1):
        batches = tiles(epoch(e))
        assert [len(b) for b in batches] == [4] * 5 + ([last] if last else [])
        seen = sum(batches, [])
        assert len(set(seen)) == len(seen) == 20 + last  # distinct: one shuffle per epoch
        kept = tiles(loader.train_loader(images, masks, np.arange(n), stats, global_batch_size=4,
                                         seed=3, epoch=e, workers=0, augment=False))
        assert batches[:5] == kept  # the whole batches are those of drop_last
        if multiple % 2:
            continue  # two processes need an even last batch (one device each at least)
        shards = [epoch(e, process_index=p, process_count=2) for p in range(2)]
        for step, batch in enumerate(epoch(e)):
            joined = np.concatenate([shards[0][step]["rgb"], shards[1][step]["rgb"]])
            np.testing.assert_allclose(joined, batch["rgb"], atol=1e-6)


# ---------------------------------------------------------------------------- schedule, EMA


def authors_lr_factor(step, warmup, total):
    """The authors' LambdaLR factor (their utils.make_lr_lambda, restated)."""
    if step < warmup:
        return max(step / max(warmup, 1), 0.01)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1.0 + np.cos(np.pi * progress))


def test_schedule_with_start_and_floor_is_the_authors_lambda():
    from jaxswin.train import make_schedule

    tcfg = config_lib.TrainConfig(epochs=9, lr=3e-4, warmup_epochs=3.0, warmup_start=0.01,
                                  lr_floor=0.05)
    schedule = make_schedule(tcfg, 7)
    for step in range(63):
        want = tcfg.lr * authors_lr_factor(step, 21, 63)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5), step


def test_ema_warmup_mean_and_raw_batch_stats():
    from test_train_step import make_step, snapshot, toy_batch, toy_state

    tcfg = config_lib.TrainConfig(epochs=2, warmup_epochs=1.0, ema_decay=0.7,
                                  ema_warmup_mean=True, ema_batch_stats=False)
    state = toy_state(tcfg)  # 5 steps per epoch: warm-up of 5 updates
    initial = snapshot(state)
    step = make_step(tcfg)
    rng = np.random.default_rng()
    shadow = None
    for n in range(8):
        state, _ = step(state, toy_batch(rng), jnp.float32(1.5), jax.random.key(n))
        params = jax.tree.map(np.asarray, state.params)
        decay = min(0.7, 1 - 1 / (n + 1)) if n < 5 else 0.7  # the authors' EMA._get_decay
        shadow = params if shadow is None else jax.tree.map(
            lambda s, p, d=decay: d * s + (1 - d) * p, shadow, params)
        for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(shadow)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        for got, want in zip(jax.tree.leaves(state.ema_batch_stats),
                             jax.tree.leaves(state.batch_stats)):
            # The same values, up to XLA recomputing the momentum update in two fusions (float32
            # rounding); an EMA of the statistics would differ by the mixing, orders larger.
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    # a running mean of the updated weights for n < 5: the initial weights never entered it
    assert not any(np.allclose(a, b) for a, b in
                   zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(initial.ema_params)))


def test_ema_wins_a_tie_and_the_better_score_wins_otherwise():
    from jaxswin.train import better_weights

    record = {"raw": {"miou": 0.8}, "ema": {"miou": 0.8}}
    assert better_weights(record, ["raw", "ema"]) == "ema"
    record["raw"]["miou"] = 0.8000001
    assert better_weights(record, ["raw", "ema"]) == "raw"
    assert better_weights({"raw": {"miou": 0.1}}, ["raw"]) == "raw"


# The README's recipe table: each switch and the value the paper's text gives it.
TEXT_SWITCHES = {
    ("train", "ema_warmup_mean"): False, ("train", "ema_batch_stats"): True,
    ("train", "warmup_start"): 0.0, ("train", "lr_floor"): 0.0, ("train", "dice"): "batch",
    ("train", "drop_last"): True, ("data", "folds"): "stratified",
    ("train", "select_threshold"): 0.51, ("model", "head_dropout"): "element",
    ("model", "aux_order"): ("thermal", "slope", "dem", "gray"),
    ("data", "affine_border"): "reflect", ("data", "blur"): "kernel",
}


@pytest.mark.parametrize("code, text", [("paper", "paper_text"), ("tiny", "tiny_text")])
def test_text_presets_ship_and_differ_from_the_code_only_in_the_switches(code, text):
    def fields(cfg):
        return {(section, key): value
                for section in ("model", "data", "train", "predict")
                for key, value in vars(getattr(cfg, section)).items()}

    code_fields, text_fields = fields(config_lib.load(code)), fields(config_lib.load(text))
    differing = {k for k in code_fields if code_fields[k] != text_fields[k]}
    assert differing == set(TEXT_SWITCHES)
    assert {k: text_fields[k] for k in TEXT_SWITCHES} == TEXT_SWITCHES
