"""The augmentations do what the rules say, and the batched torch version matches albumentations.

Both pipelines are checked on what they actually output (albumentations 2.x silently ignores 1.x argument
names), and the torch version is checked against albumentations' own parameter draws and OpenCV warp.
"""
import cv2
import numpy as np
import pytest
import torch
from albumentations.augmentations.geometric import functional as fgeometric

from train.augment import (AugmentConfig, AugmentParams, BatchAugment, albumentations_transform, fill_colour,
                           normalize_batch)

MEAN = np.array([0.49, 0.48, 0.45], np.float32)
STD = np.array([0.25, 0.24, 0.26], np.float32)
FILL = np.array(fill_colour(MEAN), np.uint8)  # (125, 122, 115)
OFF = AugmentConfig(flip_p=0.0, affine_p=0.0, cutout_p=0.0)


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    """Random uint8 HWC images in which no pixel has the cutout colour, so a hole is unmistakable."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[(x == FILL).all(-1)] = 0
    return x


def run_albumentations(x: np.ndarray, cfg: AugmentConfig, normalize: bool = False, seed: int = 0) -> np.ndarray:
    t = albumentations_transform(MEAN, STD, cfg, train=True, normalize=normalize, seed=seed)
    return np.stack([t(image=img)["image"].numpy() for img in x]).transpose(0, 2, 3, 1)  # back to NHWC


def run_batch(x: np.ndarray, cfg: AugmentConfig, normalize: bool = False, seed: int = 0) -> np.ndarray:
    out = BatchAugment(MEAN, STD, cfg)(torch.from_numpy(x).permute(0, 3, 1, 2),
                                       torch.Generator().manual_seed(seed), normalize=normalize)
    return out.permute(0, 2, 3, 1).numpy()


BOTH = pytest.mark.parametrize("run", [run_albumentations, run_batch], ids=["albumentations", "batched"])


# ---------------------------------------------------------------- each transform, as actually applied

@BOTH
def test_eval_transform_only_normalises(run):
    x = noise_images(4)
    expected = (x / 255.0 - MEAN) / STD
    t = albumentations_transform(MEAN, STD, AugmentConfig(), train=False)
    np.testing.assert_allclose(t(image=x[0])["image"].numpy().transpose(1, 2, 0), expected[0], atol=1e-5)
    np.testing.assert_allclose(run(x, OFF, normalize=True), expected, atol=1e-5)
    np.testing.assert_allclose(
        normalize_batch(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(MEAN), torch.from_numpy(STD))
        .permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


@BOTH
def test_flip_mirrors_left_to_right(run):
    x = noise_images(3)
    np.testing.assert_array_equal(run(x, AugmentConfig(flip_p=1.0, affine_p=0.0, cutout_p=0.0)), x[:, :, ::-1])


@BOTH
def test_cutout_is_one_16x16_hole_of_the_mean_colour(run):
    x = noise_images(50)
    out = run(x, AugmentConfig(flip_p=0.0, affine_p=0.0, cutout_p=1.0))
    for before, after in zip(x, out):
        hole = (after == FILL).all(-1)
        assert hole.sum() == 256
        rows, cols = np.nonzero(hole)
        assert rows.max() - rows.min() == 15 and cols.max() - cols.min() == 15  # one square, inside the image
        np.testing.assert_array_equal(after[~hole], before[~hole])


def test_cutout_hole_is_about_zero_after_normalisation():
    out = run_batch(noise_images(8), AugmentConfig(flip_p=0.0, affine_p=0.0, cutout_p=1.0), normalize=True)
    hole_values = np.sort(np.abs(out).reshape(-1, 3).max(-1))[:8 * 256]
    assert hole_values.max() < 0.01  # the fill is the mean rounded to whole 0..255 levels


@pytest.mark.parametrize("angle, scale, tx, ty", [(10.0, 1.05, 2, -3), (-15.0, 0.9, -3, 1), (0.0, 1.0, 1, 0),
                                                  (7.3, 1.1, 0, 3)])
def test_batched_warp_matches_opencv_warp_of_albumentations(angle, scale, tx, ty):
    img = noise_images(1)[0][:, :24]  # not square, to exercise the aspect-ratio terms
    h, w = img.shape[:2]
    matrix = fgeometric.create_affine_transformation_matrix(
        {"x": tx, "y": ty}, {"x": 0.0, "y": 0.0}, {"x": scale, "y": scale}, angle, fgeometric.center((h, w)))
    expected = fgeometric.warp_affine(img, matrix, cv2.INTER_LINEAR, 0, cv2.BORDER_REFLECT_101, (h, w))

    def t(v, dtype=torch.float32):
        return torch.tensor([v], dtype=dtype)

    params = AugmentParams(flip=t(False, torch.bool), affine=t(True, torch.bool), angle=t(angle), scale=t(scale),
                           tx=t(float(tx)), ty=t(float(ty)), cutout=t(False, torch.bool), hole_y=t(0, torch.int64),
                           hole_x=t(0, torch.int64))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    out = BatchAugment(MEAN, STD, AugmentConfig()).apply(x, params, normalize=False)[0].permute(1, 2, 0).numpy()
    diff = np.abs(out - expected.astype(np.float32))
    assert diff.max() <= 1.0 and diff.mean() < 0.01  # OpenCV's fixed-point weights may round one level off


# ---------------------------------------------------------------- same random distributions

N = 2000


@BOTH
@pytest.mark.parametrize("cfg, changed", [
    (AugmentConfig(flip_p=0.5, affine_p=0.0, cutout_p=0.0), lambda x, o: (o != x).any(axis=(1, 2, 3))),
    (AugmentConfig(flip_p=0.0, affine_p=0.5, cutout_p=0.0), lambda x, o: (o != x).any(axis=(1, 2, 3))),
    (AugmentConfig(flip_p=0.0, affine_p=0.0, cutout_p=0.5), lambda x, o: (o == FILL).all(-1).sum((1, 2)) == 256),
], ids=["flip", "affine", "cutout"])
def test_each_transform_is_applied_to_about_half_the_images(run, cfg, changed):
    x = noise_images(N, seed=1)
    share = changed(x, run(x, cfg)).mean()
    assert abs(share - 0.5) < 0.05  # binomial sd at N = 2000 is 0.011


def test_affine_parameters_are_drawn_like_albumentations_draws_them():
    import albumentations as A

    ref = albumentations_transform(MEAN, STD, AugmentConfig(), seed=0).transforms[1]
    assert isinstance(ref, A.Affine)
    angles, scales, shifts = [], [], []
    c = np.array(fgeometric.center((32, 32)))
    for _ in range(N):
        p = ref.get_params_dependent_on_data({"shape": (32, 32, 3)}, {})
        m = p["matrix"]
        angles.append(p["rotate"])
        scales.append((p["scale"]["x"], p["scale"]["y"]))
        shifts.append(m[:2, 2] - c + m[:2, :2] @ c)  # out = c + T + sR(in - c): recover T in pixels
    angles, scales, shifts = np.array(angles), np.array(scales), np.array(shifts)
    assert (scales[:, 0] == scales[:, 1]).all()  # one zoom factor for both axes

    ours = BatchAugment(MEAN, STD, AugmentConfig()).sample(N, 32, 32, torch.Generator().manual_seed(0))
    for theirs, mine, lo, hi in [(angles, ours.angle.numpy(), -15, 15), (scales[:, 0], ours.scale.numpy(), 0.9, 1.1)]:
        assert lo <= mine.min() and mine.max() <= hi and lo <= theirs.min() and theirs.max() <= hi
        assert abs(np.std(mine) - np.std(theirs)) < 0.05 * np.std(theirs)  # uniform: sd = (hi - lo) / sqrt(12)
    for axis, mine in enumerate([ours.tx.numpy(), ours.ty.numpy()]):
        theirs = np.round(shifts[:, axis], 6)
        assert set(np.unique(theirs)) <= set(range(-3, 4)) and set(np.unique(mine)) <= set(range(-3, 4))
        freq = [np.histogram(v, bins=np.arange(-3.5, 4.5))[0] / N for v in (theirs, mine)]
        np.testing.assert_allclose(freq[0], freq[1], atol=0.035)  # 0 twice as likely as +-1, +-3 rare


def test_hole_corners_are_drawn_like_albumentations_draws_them():
    ref = albumentations_transform(MEAN, STD, AugmentConfig(), seed=0).transforms[2]
    corners = np.array([ref.get_params_dependent_on_data({"shape": (32, 32, 3)}, {})["holes"][0, :2]
                        for _ in range(N)])  # x_min, y_min
    ours = BatchAugment(MEAN, STD, AugmentConfig()).sample(N, 32, 32, torch.Generator().manual_seed(0))
    for theirs, mine in [(corners[:, 0], ours.hole_x.numpy()), (corners[:, 1], ours.hole_y.numpy())]:
        assert theirs.min() == mine.min() == 0 and theirs.max() == mine.max() == 16
        assert abs(theirs.mean() - mine.mean()) < 0.4  # both uniform on 0..16, mean 8, sd of the mean 0.11


def test_whole_pipelines_change_images_by_the_same_amount():
    x = noise_images(N, seed=2)
    x = cv2.blur(x.reshape(N * 32, 32, 3), (3, 3)).reshape(x.shape)  # some spatial structure, like photos
    change = [np.abs(run(x, AugmentConfig()).astype(np.float32) - x).mean(axis=(1, 2, 3))
              for run in (run_albumentations, run_batch)]
    # Two-sample Kolmogorov-Smirnov distance; 0.07 is beyond the 0.1% critical value (0.062) at N = 2000.
    grid = np.sort(np.concatenate(change))
    cdfs = [np.searchsorted(np.sort(c), grid, side="right") / N for c in change]
    assert np.abs(cdfs[0] - cdfs[1]).max() < 0.07
    assert abs(change[0].mean() - change[1].mean()) < 0.05 * change[0].mean()


# ---------------------------------------------------------------- the batched version itself

def test_batched_augment_is_reproducible_from_its_generator_and_keeps_uint8_input():
    x = torch.from_numpy(noise_images(16)).permute(0, 3, 1, 2)
    aug = BatchAugment(MEAN, STD, AugmentConfig())
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and a.shape == (16, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_augment_runs_on_cuda_with_a_cuda_generator():
    x = torch.from_numpy(noise_images(64)).permute(0, 3, 1, 2).cuda()
    out = BatchAugment(MEAN, STD, AugmentConfig())(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == (64, 3, 32, 32) and torch.isfinite(out).all()
