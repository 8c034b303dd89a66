"""Batch feeding: DeviceLoader (whole set on the device) and the albumentations DataLoader reference path."""
import numpy as np
import pytest
import torch

from train.augment import AugmentConfig
from train.loader import DeviceLoader, make_dataloader

MEAN = np.array([0.5, 0.4, 0.3], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)


def indexed_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels spell their own index, with label = index % 7 so alignment can be checked."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x, np.arange(n) % 7


def to_uint8(xb: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: back to uint8 NHWC."""
    x = xb.permute(0, 2, 3, 1).numpy() * STD + MEAN
    return np.round(x * 255).astype(np.uint8)


def ids(xb: torch.Tensor) -> np.ndarray:
    x = to_uint8(xb)
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def loader(x, y, train=True, augment=None, **kw) -> DeviceLoader:
    return DeviceLoader(x, y, MEAN, STD, batch_size=32, device="cpu", train=train, augment=augment, **kw)


def test_training_batches_have_the_right_count_shapes_dtypes_and_memory_format():
    x, y = indexed_images(100)
    batches = list(loader(x, y, augment=AugmentConfig()))
    assert len(loader(x, y)) == len(batches) == 3  # 100 // 32, the partial batch dropped
    for xb, yb in batches:
        assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.is_contiguous(memory_format=torch.channels_last)


def test_evaluation_keeps_order_every_image_and_only_normalises():
    x, y = indexed_images(100)
    batches = list(loader(x, y, train=False, augment=AugmentConfig()))
    assert [len(yb) for _, yb in batches] == [32, 32, 32, 4]
    images = np.concatenate([to_uint8(xb) for xb, _ in batches])
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(torch.cat([yb for _, yb in batches]).numpy(), y)


def test_labels_stay_aligned_with_shuffled_images():
    x, y = indexed_images(300)
    seen = []
    for xb, yb in loader(x, y):
        idx = ids(xb)
        np.testing.assert_array_equal(yb.numpy(), y[idx])
        np.testing.assert_array_equal(to_uint8(xb), x[idx])
        seen.extend(idx)
    assert len(set(seen)) == len(seen) == 288 and seen != sorted(seen)


def test_same_seed_and_epoch_replay_order_and_augmentation_and_new_epochs_differ():
    x, y = indexed_images(100)
    a, b = loader(x, y, augment=AugmentConfig(), seed=4), loader(x, y, augment=AugmentConfig(), seed=4)
    first, again = list(a), list(b)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    second = list(a)  # iterating again runs epoch 1
    assert not torch.equal(first[0][1], second[0][1])
    a.set_epoch(1)  # a resumed run jumps straight to epoch 1
    assert all(torch.equal(p[0], q[0]) for p, q in zip(second, list(a)))
    other_seed = list(loader(x, y, augment=AugmentConfig(), seed=5))
    assert not torch.equal(first[0][1], other_seed[0][1])


def test_augmentation_changes_the_images_of_the_same_shuffled_order_and_not_the_labels():
    x, y = indexed_images(64)
    plain = list(loader(x, y, seed=1))
    flipped = list(loader(x, y, seed=1, augment=AugmentConfig(flip_p=1.0, affine_p=0.0, cutout_p=0.0)))
    for (xp, yp), (xf, yf) in zip(plain, flipped):
        assert torch.equal(yp, yf)
        torch.testing.assert_close(xf, xp.flip(-1))


def test_too_few_images_for_one_training_batch_is_refused():
    x, y = indexed_images(10)
    with pytest.raises(ValueError, match="no batch of 32"):
        loader(x, y)
    assert len(loader(x, y, drop_last=False)) == 1


def test_images_on_the_host_give_the_same_batches():
    x, y = indexed_images(100)
    on_device = list(loader(x, y, augment=AugmentConfig()))
    on_host = list(loader(x, y, augment=AugmentConfig(), keep_on_device=False))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(on_device, on_host))


def test_reference_dataloader_yields_normalised_float_batches_in_process():
    x, y = indexed_images(70)
    batches = list(make_dataloader(x, y, MEAN, STD, batch_size=32, train=False, augment=None, workers=0))
    assert [len(yb) for _, yb in batches] == [32, 32, 6]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and xb.shape == (32, 3, 32, 32) and yb.dtype == torch.int64
    np.testing.assert_array_equal(to_uint8(xb), x[:32])


def test_reference_dataloader_workers_do_not_repeat_each_others_augmentations():
    x = np.repeat(indexed_images(1)[0], 32, axis=0)  # one image 32 times: only augmentation tells batches apart
    dl = make_dataloader(x, np.zeros(32), MEAN, STD, batch_size=8, train=True, augment=AugmentConfig(), workers=2)
    b0, b1 = [xb for xb, _ in dl][:2]  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(b0, b1)


def test_alternate_flip_shows_every_image_both_ways_over_two_epochs_and_repeats():
    x, y = indexed_images(64)
    x[:, 1, :, 2] = 0
    x[:, 1, 0, 2] = 255  # a marker in the left column: it is in the right one when the image is flipped
    d = loader(x, y, augment=AugmentConfig(affine_p=0.0, cutout_p=0.0), alternate_flip=True)

    def flipped_by_id(epoch: int) -> dict[int, bool]:
        d.set_epoch(epoch)
        out = {}
        for xb, _ in d:
            u = to_uint8(xb).astype(np.int64)
            flipped = u[:, 1, 31, 2] == 255
            col = np.where(flipped, 31, 0)  # the id pixel moves with the flip
            rows = np.arange(len(u))
            out.update(zip((u[rows, 0, col, 0] + 256 * u[rows, 0, col, 1]).tolist(), flipped.tolist()))
        return out

    e1, e2, e3 = (flipped_by_id(e) for e in (1, 2, 3))
    common = set(e1) & set(e2)
    assert len(common) > 20
    assert all(e1[i] != e2[i] for i in common)  # each image the other way round in the next epoch
    assert all(e1[i] == e3[i] for i in set(e1) & set(e3))
    assert 0.25 < np.mean(list(e1.values())) < 0.75  # about half flipped each epoch
