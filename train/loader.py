"""Batches for training and evaluation: on the device with no per-image Python, or the classic DataLoader.

`DeviceLoader` keeps the whole uint8 image set as one tensor (on the GPU when training there: CIFAR-10 is
150 MB as uint8), shuffles it with a generator seeded by (seed, epoch), slices batches and augments or
normalises them where they lie. An epoch's order and augmentations depend only on the seed and the epoch
number, so a resumed run replays them exactly.

`make_dataloader` is the reference path: a torch DataLoader whose workers run the albumentations pipeline
image by image, as the seed notebooks did. It is what the baseline benchmark measures against.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .augment import AugmentConfig, BatchAugment, albumentations_transform, normalize_batch, normalize_constants
from .device import available_cpus, canonical_device, same_device

__all__ = ["DeviceLoader", "AlbumentationsDataset", "make_dataloader", "pin_before_copy"]


class DeviceLoader:
    """Yields (x float32 N x 3 x H x W in channels_last memory format, y int64) on `device`.

    x_uint8_nhwc: uint8 images N x H x W x 3; y: their labels. train=True shuffles every epoch, applies
    `augment` (None: none) and drops the last partial batch unless drop_last says otherwise; train=False
    keeps the order and only normalises. Each `iter()` runs the next epoch; `set_epoch(e)` jumps to epoch e.
    keep_on_device=False leaves the images in host memory and copies each batch over (pinned) instead.
    alternate_flip=True flips a random half of the images (drawn once from the seed) in odd epochs and the
    other half in even ones, instead of drawing each flip anew: every image is seen both ways in two epochs.
    """

    def __init__(self, x_uint8_nhwc: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, mean: np.ndarray,
                 std: np.ndarray, batch_size: int, device: torch.device | str = "cpu", train: bool = True,
                 augment: AugmentConfig | None = None, seed: int = 0, drop_last: bool | None = None,
                 keep_on_device: bool = True, alternate_flip: bool = False):
        x = torch.as_tensor(x_uint8_nhwc)
        labels = torch.as_tensor(y, dtype=torch.int64)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images N x H x W x 3, got {x.dtype} {tuple(x.shape)}")
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = canonical_device(device)  # cuda -> cuda:0: as the tensors sent there report it
        self.batch_size = batch_size
        self.train = train
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.epoch = 0
        storage = self.device if keep_on_device else torch.device("cpu")
        self.x = x.to(storage)
        self.y = labels.to(storage)
        self.mean = torch.as_tensor(np.asarray(mean, np.float32).reshape(3)).to(self.device)
        self.std = torch.as_tensor(np.asarray(std, np.float32).reshape(3)).to(self.device)
        self._normalize = normalize_constants(self.mean, self.std, self.device)
        self.augment = BatchAugment(mean, std, augment) if train and augment is not None else None
        self.alternate_flip = alternate_flip
        self._flip_half = None  # the images flipped in odd epochs, drawn on first use
        if len(self) == 0:
            raise ValueError(f"{len(x)} images make no batch of {batch_size} with drop_last=True")

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch `epoch` (its order and augmentations are fixed by seed and epoch)."""
        self.epoch = epoch

    def set_augment(self, augment: AugmentConfig | None) -> None:
        """Augment the next epochs with these probabilities and ranges (an augmentation schedule)."""
        if self.train:
            self.augment = BatchAugment(self.mean.cpu().numpy(), self.std.cpu().numpy(), augment) \
                if augment is not None else None

    def _generator(self, device: torch.device, stream: int) -> torch.Generator:
        # One seed per (seed, epoch, stream), spread out so that neighbouring seeds do not overlap epochs.
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + self.epoch) * 2 + stream)
        return g

    def _epoch_flips(self, epoch: int) -> torch.Tensor:
        """Bool per image (on the storage device): flipped in this 1-based epoch under alternate_flip."""
        if self._flip_half is None:
            # one draw per seed, whatever the epoch; far from the (seed, epoch) generators' seeds
            g = torch.Generator().manual_seed(2**62 + self.seed)
            self._flip_half = (torch.rand(len(self.x), generator=g) < 0.5).to(self.x.device)
        return self._flip_half if epoch % 2 == 1 else ~self._flip_half

    def _send(self, t: torch.Tensor) -> torch.Tensor:
        """A host batch on the loader's device; pinned first when going to a GPU, so that the copy overlaps
        the previous batch's compute (non_blocking from pageable memory would wait anyway)."""
        if pin_before_copy(t.device, self.device):
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, storage = len(self.x), self.x.device
        if self.train:
            order = torch.randperm(n, generator=self._generator(torch.device("cpu"), 0)).to(storage)
        else:
            order = torch.arange(n, device=storage)
        aug_gen = self._generator(self.device, 1) if self.augment is not None else None
        flips = self._epoch_flips(self.epoch) if self.alternate_flip and self.augment is not None else None
        self.epoch += 1  # the next iter() runs the next epoch, unless set_epoch says otherwise
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if not same_device(xb.device, self.device):  # images kept on the host: send the batch over
                xb, yb = self._send(xb), self._send(yb)
            xb = xb.permute(0, 3, 1, 2)  # NHWC -> NCHW, a view in channels_last layout
            if self.augment is not None:
                flip = flips[idx].to(self.device, non_blocking=True) if flips is not None else None
                xb = self.augment(xb, aug_gen, flip=flip)
            else:
                xb = normalize_batch(xb, self.mean, self.std, self._normalize)
            yield xb.contiguous(memory_format=torch.channels_last), yb


def pin_before_copy(source: torch.device, target: torch.device) -> bool:
    """Pin a tensor before copying it from source to target: only CPU tensors can be pinned, and only a copy
    to a CUDA device gains from it."""
    return torch.device(source).type == "cpu" and torch.device(target).type == "cuda"


class AlbumentationsDataset(torch.utils.data.Dataset):
    """Images kept as uint8 HWC and pushed one by one through an albumentations pipeline."""

    def __init__(self, x_uint8_nhwc: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x_uint8_nhwc, np.asarray(y, np.int64), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.x[i])["image"], int(self.y[i])


def _reseed_worker(worker_id: int) -> None:
    # albumentations 2.x Compose keeps its own random state, which forked workers would all inherit:
    # without this every worker would replay the same augmentations.
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def make_dataloader(x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_size: int, train: bool,
                    augment: AugmentConfig | None, workers: int | None = None, seed: int = 0,
                    device: torch.device | str = "cpu") -> torch.utils.data.DataLoader:
    """A DataLoader of (x float32 N x 3 x H x W, y int64) on the host, augmenting per image with
    albumentations; `workers` defaults to min(CPU count, 8) and 0 runs in the calling process."""
    workers = min(available_cpus(), 8) if workers is None else workers
    transform = albumentations_transform(mean, std, augment, train=train, seed=seed)
    return torch.utils.data.DataLoader(
        AlbumentationsDataset(x, y, transform), batch_size=batch_size, shuffle=train, drop_last=train,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=_reseed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))
