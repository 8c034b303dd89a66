"""The training augmentations, twice: per image with albumentations (the reference) and batched in torch.

The rules fix three transforms, applied in this order to uint8 images, each with its own probability:
horizontal flip; shift-scale-rotate (reflect-101 border); cutout of one 16x16 hole filled with the
dataset's mean colour. Then both pipelines normalise with the dataset mean and std.

`albumentations_transform` builds the per-image albumentations 2.x pipeline (used by the DataLoader path).
`BatchAugment` does the same to a whole batch on any device with a handful of tensor ops, drawing its
random parameters from the same distributions as albumentations 2.0.8 draws them:
  * Affine: translation u * side with u ~ U(-shift, shift), truncated to whole pixels (Affine casts it with
    int()); scale ~ U(1 - scale, 1 + scale), the same for both axes (as ShiftScaleRotate had it);
    angle ~ U(-rotate, rotate) degrees; about the image centre ((side - 1) / 2 in pixel indices).
  * CoarseDropout: the hole lies wholly inside the image, its top-left corner uniform in [0, side - 16].
The warp uses grid_sample with align_corners=True: then normalised -1/+1 are the centres of the corner
pixels, so "reflection" padding mirrors about those centres, which is exactly OpenCV's BORDER_REFLECT_101
(align_corners=False would mirror about the pixel edges, i.e. BORDER_REFLECT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "AugmentParams", "BatchAugment", "albumentations_transform", "fill_colour",
           "normalize_batch", "normalize_constants", "affine_theta"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the three training augmentations."""

    flip_p: float = 0.5  # probability of a horizontal flip
    affine_p: float = 0.5  # probability of the shift-scale-rotate
    shift: float = 0.1  # largest translation per axis, as a fraction of the image side
    scale: float = 0.1  # the zoom factor is drawn from 1 - scale .. 1 + scale
    rotate: float = 15.0  # largest rotation either way, degrees
    cutout_p: float = 0.5  # probability of cutting the hole
    cutout_size: int = 16  # side of the square hole, pixels


def fill_colour(mean: np.ndarray) -> tuple[int, int, int]:
    """The cutout colour: the dataset mean (in [0, 1] units) as 0..255 integers, rounded."""
    # albumentations truncates a float fill on uint8 images; giving it integers makes both paths agree.
    return tuple(int(round(float(m) * 255.0)) for m in np.asarray(mean).reshape(3))


def albumentations_transform(mean: np.ndarray, std: np.ndarray, cfg: AugmentConfig | None, train: bool = True,
                             normalize: bool = True, seed: int | None = None):
    """Per-image pipeline HWC uint8 -> CHW float32 tensor (uint8 when normalize=False). With train=False or
    cfg=None it only normalises. `seed` fixes albumentations' own random state (it ignores numpy's)."""
    import albumentations as A  # start-up cost: ~0.42 s (-X importtime, after torch); BatchAugment needs none
    import cv2  # start-up cost: ~18 ms alone (albumentations loads it anyway); only this pipeline uses it
    from albumentations.pytorch import ToTensorV2  # start-up cost: part of albumentations' ~0.42 s

    steps = []
    if train and cfg is not None:
        # albumentations 2.x names only: 1.x names (max_holes, fill_value, ...) are ignored with a mere warning.
        steps = [
            A.HorizontalFlip(p=cfg.flip_p),
            A.Affine(translate_percent=(-cfg.shift, cfg.shift), scale=(1 - cfg.scale, 1 + cfg.scale),
                     rotate=(-cfg.rotate, cfg.rotate), keep_ratio=True, interpolation=cv2.INTER_LINEAR,
                     border_mode=cv2.BORDER_REFLECT_101, p=cfg.affine_p),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cfg.cutout_size, cfg.cutout_size),
                            hole_width_range=(cfg.cutout_size, cfg.cutout_size), fill=fill_colour(mean),
                            p=cfg.cutout_p),
        ]
    if normalize:
        steps.append(A.Normalize(mean=tuple(map(float, mean)), std=tuple(map(float, std)), max_pixel_value=255.0))
    steps.append(ToTensorV2())
    return A.Compose(steps, seed=seed)


def normalize_constants(mean: torch.Tensor, std: torch.Tensor, device: torch.device | str
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), 1 x 3 x 1 x 1 on `device`, with x * scale - shift = (x / 255 - mean) / std: computed
    once per loader rather than in every batch (five fewer ops a batch)."""
    scale = 1.0 / (255.0 * std.to(device, torch.float32)).view(1, -1, 1, 1)
    shift = (mean.to(device, torch.float32) / std.to(device, torch.float32)).view(1, -1, 1, 1)
    return scale, shift


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    constants: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, for uint8 or 0..255 float NCHW x; mean/std in [0, 1] units.
    `constants`: normalize_constants(mean, std, x.device), when the caller keeps them."""
    scale, shift = constants if constants is not None else normalize_constants(mean, std, x.device)
    return x.to(torch.float32) * scale - shift


def affine_theta(angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                 height: int, width: int) -> torch.Tensor:
    """N x 2 x 3 matrices for F.affine_grid(align_corners=True) reproducing albumentations' Affine.

    Albumentations maps input to output about the centre c as out - c = T + s R (in - c), with
    R = [[cos a, sin a], [-sin a, cos a]], a in degrees, T = (tx, ty) in pixels, and OpenCV samples
    the input at the inverse of that. affine_grid wants the inverse too, in coordinates where the corner
    pixel centres are -1 and +1, i.e. n = D (p - c) with D = diag(2 / (W - 1), 2 / (H - 1)).
    """
    a = angle * (math.pi / 180.0)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale  # (s R)^-1 = R^T / s
    dx, dy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    # D (s R)^-1 D^-1: the off-diagonal terms pick up the aspect ratio dx / dy.
    m00, m01 = cos, -sin * dx / dy
    m10, m11 = sin * dy / dx, cos
    # translation: -D (s R)^-1 T
    t0 = -dx * (cos * tx - sin * ty)
    t1 = -dy * (sin * tx + cos * ty)
    return torch.stack([torch.stack([m00, m01, t0], -1), torch.stack([m10, m11, t1], -1)], -2)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's random draws; every field is a length-N tensor on the batch's device."""

    flip: torch.Tensor  # bool
    affine: torch.Tensor  # bool
    angle: torch.Tensor  # degrees
    scale: torch.Tensor  # zoom factor, 1 = none
    tx: torch.Tensor  # whole pixels, positive = right
    ty: torch.Tensor  # whole pixels, positive = down
    cutout: torch.Tensor  # bool
    hole_y: torch.Tensor  # top row of the hole, pixels
    hole_x: torch.Tensor  # left column of the hole, pixels


class BatchAugment:
    """The training augmentations of a whole uint8 NCHW batch at once, on the batch's device.

    `aug(x)` returns the normalised float32 batch; `aug(x, normalize=False)` stops before normalising and
    returns 0..255 floats. A NHWC uint8 tensor can be passed as `x.permute(0, 3, 1, 2)` (a free view).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, cfg: AugmentConfig | None = AugmentConfig()):
        self.cfg = cfg
        self.mean = torch.as_tensor(np.asarray(mean, np.float32).reshape(3))
        self.std = torch.as_tensor(np.asarray(std, np.float32).reshape(3))
        self.fill = torch.tensor(fill_colour(self.mean.numpy()), dtype=torch.float32)
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self._grids: dict[tuple[torch.device, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        """(fill, mean, std, normalize_constants) on `device`, made there once rather than on every batch."""
        if device not in self._constants:
            fill, mean, std = (t.to(device) for t in (self.fill, self.mean, self.std))
            self._constants[device] = (fill, mean, std, normalize_constants(mean, std, device))
        return self._constants[device]

    def _rows_cols(self, device: torch.device, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel row (1 x h) and column (1 x w) indices, made once per device and image size."""
        key = (device, h, w)
        if key not in self._grids:
            self._grids[key] = (torch.arange(h, device=device).view(1, h), torch.arange(w, device=device).view(1, w))
        return self._grids[key]

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> AugmentParams:
        """Draw the parameters of n images from the generator (on its own device), then move them to `device`."""
        cfg = self.cfg or AugmentConfig(flip_p=0.0, affine_p=0.0, cutout_p=0.0)
        gen_device = generator.device if generator is not None else torch.device(device)

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator, device=gen_device)

        def below(p: float) -> torch.Tensor:  # uniform(0, 1) < p in two ops: 0 + 1 * u is exactly u
            return torch.rand(n, generator=generator, device=gen_device) < p

        def hole_corner(side: int) -> torch.Tensor:
            return torch.randint(0, side - cfg.cutout_size + 1, (n,), generator=generator, device=gen_device)

        params = dict(
            flip=below(cfg.flip_p),
            affine=below(cfg.affine_p),
            angle=uniform(-cfg.rotate, cfg.rotate),
            scale=uniform(1 - cfg.scale, 1 + cfg.scale),
            tx=torch.trunc(uniform(-cfg.shift, cfg.shift) * width),  # int() in albumentations: towards zero
            ty=torch.trunc(uniform(-cfg.shift, cfg.shift) * height),
            cutout=below(cfg.cutout_p),
            hole_y=hole_corner(height),
            hole_x=hole_corner(width),
        )
        return AugmentParams(**{k: v.to(device, non_blocking=True) for k, v in params.items()})

    def apply(self, x: torch.Tensor, params: AugmentParams, normalize: bool = True) -> torch.Tensor:
        """Flip, warp, cut out (then normalise) a uint8 NCHW batch with the given parameters."""
        n, _, h, w = x.shape
        fill, mean, std, constants = self._on(x.device)
        out = x.to(torch.float32)  # 0..255 units until normalisation
        out = torch.where(params.flip.view(n, 1, 1, 1), out.flip(-1), out)

        # Warp every image (fixed shapes, no host sync on GPUs) and keep the result only where drawn.
        theta = affine_theta(params.angle, params.scale, params.tx, params.ty, h, w)
        grid = F.affine_grid(theta, [n, 3, h, w], align_corners=True)
        warped = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        warped = warped.round_().clamp_(0, 255)  # OpenCV writes uint8 back, so round like it does
        out = torch.where(params.affine.view(n, 1, 1, 1), warped, out)

        size = self.cfg.cutout_size if self.cfg is not None else 0
        rows, cols = self._rows_cols(x.device, h, w)
        in_rows = (rows >= params.hole_y.view(n, 1)) & (rows < params.hole_y.view(n, 1) + size)
        in_cols = (cols >= params.hole_x.view(n, 1)) & (cols < params.hole_x.view(n, 1) + size)
        hole = (in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)) & params.cutout.view(n, 1, 1, 1)
        out = torch.where(hole, fill.view(1, 3, 1, 1), out)

        return normalize_batch(out, mean, std, constants) if normalize else out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 normalize: bool = True, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a uint8 NCHW batch with freshly drawn parameters; `flip` (bool per image), when given,
        replaces the drawn flips (an alternating-flip schedule)."""
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 N x 3 x H x W batch, got {x.dtype} {tuple(x.shape)}")
        if self.cfg is None:
            _, mean, std, constants = self._on(x.device)
            return normalize_batch(x, mean, std, constants) if normalize else x.to(torch.float32)
        n, _, h, w = x.shape
        params = self.sample(n, h, w, generator, x.device)
        if flip is not None:
            params = replace(params, flip=flip)
        return self.apply(x, params, normalize)
