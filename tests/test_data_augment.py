"""Table 4 augmentation: geometric steps keep image and mask aligned, photometric ones touch RGB only."""

import math

import numpy as np
import pytest
from scipy import ndimage

from jaxswin.data import augment
from jaxswin.errors import ConfigError

H = W = 32


def warp_numpy(rgb, aux, mask, matrices):
    out = augment.warp({"rgb": rgb, "aux": aux, "mask": mask, "warp": matrices})
    assert "warp" not in out
    return {k: np.asarray(v) for k, v in out.items()}


def random_batch(rng, n):
    return (rng.random((n, H, W, 3), dtype=np.float32), rng.random((n, H, W, 4), dtype=np.float32),
            (rng.random((n, H, W, 1)) < 0.4).astype(np.float32))


def matrix_of(linear, shift=(0.0, 0.0)):
    """The sampler's convention for a given linear part: about the centre, then shifted."""
    linear = np.asarray(linear, np.float64)
    centre = np.array([(H - 1) / 2, (W - 1) / 2])
    offset = centre - linear @ (centre + np.asarray(shift))
    return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    "linear, reference",
    [
        ([[1, 0], [0, -1]], lambda x: x[:, ::-1]),  # horizontal flip
        ([[-1, 0], [0, 1]], lambda x: x[::-1]),  # vertical flip
        ([[0, 1], [-1, 0]], lambda x: np.rot90(x, 1)),
        ([[-1, 0], [0, -1]], lambda x: np.rot90(x, 2)),
        ([[0, -1], [1, 0]], lambda x: np.rot90(x, 3)),
    ],
)
def test_flips_and_rot90_are_exact_pixel_moves(linear, reference):
    rng = np.random.default_rng()
    rgb, aux, mask = random_batch(rng, 2)
    out = warp_numpy(rgb, aux, mask, np.stack([matrix_of(linear)] * 2))
    for i in range(2):
        assert np.array_equal(out["rgb"][i], reference(rgb[i]))
        assert np.array_equal(out["aux"][i], reference(aux[i]))
        assert np.array_equal(out["mask"][i], reference(mask[i]))


def test_affine_warp_matches_scipy_bilinear_with_mirrored_border():
    rng = np.random.default_rng()
    rgb, aux, mask = random_batch(rng, 4)
    matrices = np.stack([augment.sample_warp(rng, H, W) for _ in range(3)]
                        + [matrix_of([[0.9, 0.3], [-0.3, 0.9]], (2.0, -1.5))])
    out = warp_numpy(rgb, aux, mask, matrices)
    for i, m in enumerate(matrices):
        for name, images in (("rgb", rgb), ("aux", aux)):
            for c in range(images.shape[-1]):
                expected = ndimage.affine_transform(
                    images[i, ..., c].astype(np.float64), m[:, :2], offset=m[:, 2], order=1,
                    mode="mirror")
                np.testing.assert_allclose(out[name][i, ..., c], expected, atol=2e-5)


def test_warp_keeps_image_and_mask_aligned_on_a_known_pattern():
    # Each image band and the mask hold the same 4x4-pixel checkerboard: wherever the bilinear
    # image is exactly 0 or 1 (all four source pixels agree), the nearest-neighbour mask must say
    # the same. A mask warped differently from the image would disagree on whole blocks.
    rng = np.random.default_rng()
    rows, cols = np.mgrid[0:H, 0:W]
    board = (((rows // 4) + (cols // 4)) % 2).astype(np.float32)
    n = 64
    matrices = np.stack([augment.sample_warp(rng, H, W) for _ in range(n)])
    out = warp_numpy(np.repeat(board[None, ..., None], 3, -1).repeat(n, 0),
                     np.repeat(board[None, ..., None], 4, -1).repeat(n, 0),
                     board[None, ..., None].repeat(n, 0), matrices)
    image = np.concatenate([out["rgb"], out["aux"]], -1)
    assert np.allclose(image, image[..., :1])  # every band moved alike
    pure = (np.abs(image[..., 0] - 0) < 1e-6) | (np.abs(image[..., 0] - 1) < 1e-6)
    assert pure.mean() > 0.4
    assert np.array_equal(out["mask"][..., 0][pure], np.round(image[..., 0][pure]))
    assert set(np.unique(out["mask"])) <= {0.0, 1.0}


def test_sampled_warps_follow_table_4():
    rng = np.random.default_rng()
    linears = np.stack([augment.sample_warp(rng, H, W)[:, :2] for _ in range(4000)])
    integer = np.all(np.isin(linears, [-1.0, 0.0, 1.0]), axis=(1, 2))
    assert abs(integer.mean() - (1 - augment.AFFINE_P)) < 0.04  # the affine step, p = 0.5
    # Without it, flips and rot90 (k = 0 with p = 0.5 + 0.5 / 4) give the identity when nothing
    # applies or when both flips (a half turn) meet a half turn.
    identity = np.all(linears == np.eye(2), axis=(1, 2)).mean() / integer.mean()
    assert abs(identity - (0.25 * 0.625 + 0.25 * 0.125)) < 0.03
    # With it: scale 0.9-1.1 and rotation within 20 degrees on top of a symmetry.
    warped = linears[~integer]
    singular = np.linalg.svd(warped, compute_uv=False)
    assert np.allclose(singular[:, 0], singular[:, 1], atol=1e-5)
    scale = 1 / singular[:, 0]
    assert scale.min() >= 0.9 - 1e-5 and scale.max() <= 1.1 + 1e-5
    angles = np.degrees(np.arctan2(warped[:, 0, 1], warped[:, 0, 0])) % 90
    assert np.all((angles <= 20 + 1e-3) | (angles >= 70 - 1e-3))


def test_gaussian_blur_is_opencvs_kernel_with_reflect101_border():
    rng = np.random.default_rng()
    rgb = rng.random((20, 24, 3)).astype(np.float32)
    for kernel in augment.BLUR_KERNELS:
        sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel with sigma <= 0
        taps = np.exp(-((np.arange(kernel) - (kernel - 1) / 2) ** 2) / (2 * sigma**2))
        taps /= taps.sum()
        radius = kernel // 2
        padded = np.pad(rgb.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)),
                        mode="reflect")  # numpy's reflect is OpenCV's BORDER_REFLECT_101
        rows = sum(t * padded[i : i + rgb.shape[0]] for i, t in enumerate(taps))
        expected = sum(t * rows[:, i : i + rgb.shape[1]] for i, t in enumerate(taps))
        np.testing.assert_allclose(augment.gaussian_blur(rgb, kernel), expected, atol=1e-5)


def test_photometric_steps_change_rgb_only_and_are_seeded():
    rng = np.random.default_rng()
    image = rng.random((H, W, 7)).astype(np.float32)
    element = {"image": image, "mask": np.zeros((H, W), np.uint8)}
    before = image.copy()
    changed = 0
    trials = 400
    for seed in range(trials):
        out = augment.Augment().random_map(element, np.random.default_rng(seed))
        again = augment.Augment().random_map(element, np.random.default_rng(seed))
        assert np.array_equal(out["image"], again["image"])
        assert np.array_equal(out["warp"], again["warp"])
        assert np.array_equal(out["image"][..., 3:], image[..., 3:])  # geophysical bands untouched
        assert out["image"][..., :3].min() >= 0 and out["image"][..., :3].max() <= 1
        changed += not np.array_equal(out["image"][..., :3], image[..., :3])
    assert np.array_equal(image, before)  # the source tile is never modified
    p_any = 1 - (1 - augment.BLUR_P) * (1 - augment.BRIGHTNESS_CONTRAST_P)
    assert abs(changed / trials - p_any) < 4 * math.sqrt(p_any * (1 - p_any) / trials)


# ----------------------------------------------------------------------------- generalisation levers


@pytest.mark.parametrize("make_field", [augment.elastic_field, augment.grid_field])
def test_distortions_keep_image_and_mask_aligned(make_field):
    rng = np.random.default_rng()
    mask = (ndimage.gaussian_filter(rng.random((64, 64)), 6) > 0.5).astype(np.uint8)
    image = np.repeat(mask[..., None].astype(np.float32), 2, axis=-1)
    field = make_field(rng, 64, 64)
    assert np.abs(field).max() > 1.0  # it moves pixels
    warped, warped_mask = augment.distort(image, mask, field)
    assert warped.shape == image.shape and warped_mask.dtype == mask.dtype
    # The bilinear band and the nearest mask moved together: they agree away from edges.
    assert np.mean((warped[..., 0] > 0.5) == (warped_mask > 0)) > 0.97
    assert not np.array_equal(warped_mask, mask)


def test_grid_distortion_keeps_the_tile_edges_and_order():
    rng = np.random.default_rng()
    field = augment.grid_field(rng, 50, 70)
    rows = np.arange(50) + field[0][:, 0]
    cols = np.arange(70) + field[1][0]
    assert rows[0] == 0 and rows[-1] == pytest.approx(49) and np.all(np.diff(rows) > 0)
    assert cols[0] == 0 and cols[-1] == pytest.approx(69) and np.all(np.diff(cols) > 0)


def test_coarse_dropout_zeroes_rectangles_on_every_band():
    rng = np.random.default_rng()
    image = rng.uniform(0.1, 1.0, (64, 64, 7)).astype(np.float32)
    out = augment.coarse_dropout(image, rng)
    holes = out == 0
    assert holes.any() and np.array_equal(holes[..., 0:1].repeat(7, -1), holes)
    labels, count = ndimage.label(holes[..., 0])
    assert 1 <= count <= augment.DROPOUT_HOLES[1]
    assert np.array_equal(out[~holes], image[~holes])


def test_band_dropout_rate_and_never_every_band():
    rng = np.random.default_rng()
    keeps = np.stack([augment.band_keep(rng, 7, 0.3) for _ in range(3000)])
    assert keeps.sum(axis=1).min() >= 1
    assert abs(1 - keeps.mean() - 0.3) < 0.03
    assert np.all(augment.band_keep(rng, 3, 0.99).sum() == 1)


def test_strong_policy_is_wider_and_bad_values_are_config_errors():
    strong, standard = augment.POLICIES["strong"], augment.POLICIES["standard"]
    assert strong.rotate_limit > standard.rotate_limit and strong.distort_p > 0
    assert standard.distort_p == standard.dropout_p == 0
    with pytest.raises(ConfigError, match="augment_strength"):
        augment.Augment("extreme")
    with pytest.raises(ConfigError, match="band_dropout"):
        augment.Augment("standard", 1.5)


def test_border_smoothing_eases_exactly_the_border_pixels():
    from jaxswin.data.loader import soften_borders

    rng = np.random.default_rng()
    mask = (rng.random((3, 20, 20)) < 0.4).astype(np.float32)
    eps = float(rng.uniform(0.05, 0.3))
    border = ndimage.maximum_filter(mask, (1, 3, 3), mode="nearest") != ndimage.minimum_filter(
        mask, (1, 3, 3), mode="nearest")
    expected = np.where(border, mask * (1 - eps) + eps / 2, mask)
    np.testing.assert_allclose(np.asarray(soften_borders(mask, eps)), expected, atol=1e-6)
