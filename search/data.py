"""The data a search sees (training images split into train/validation) and the final retrain sees.

The search never touches the test set: candidates are scored on a seeded, stratified validation split of
the training images. Only the final retrain of the winner trains on all training images and is evaluated,
once, on the test set.
"""
from __future__ import annotations

from pathlib import Path

from train.data import DATASETS, ImageData, load_dataset, train_val_split
from train.engine import MIN_STEPS

from .settings import SearchError, SearchSettings

__all__ = ["check_steps", "load_full", "search_split"]


def load_full(dataset: str, data_dir: str | Path | None, subset_train: int | None = None,
              subset_test: int | None = None, seed: int = 0, download: bool = True) -> ImageData:
    """The dataset's training and test images, optionally a balanced random subset of each."""
    if dataset not in DATASETS:
        raise SearchError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    data = load_dataset(dataset, data_dir, download=download)
    if subset_train is not None or subset_test is not None:
        data = data.subset(subset_train, subset_test, seed=seed)
    return data




def check_steps(n_images: int, batch_size: int, epochs: int, what: str) -> None:
    """SearchError, before any training, if a run would have too few full batches to train."""
    steps = n_images // batch_size * epochs  # the last partial batch is dropped
    if steps < MIN_STEPS:
        raise SearchError(f"{what}: {n_images} training images in batches of {batch_size} for {epochs} epochs "
                          f"make {steps} optimizer steps (at least {MIN_STEPS} needed); lower --batch-size or use "
                          "more data or epochs")


def search_split(data: ImageData, settings: SearchSettings) -> ImageData:
    """Train part: training images minus the validation split; held-out ("test") part: the validation split."""
    split = train_val_split(data, settings.val_size, seed=settings.seed)
    check_steps(len(split.y_train), settings.batch_size, settings.trial_epochs, "each trial")
    return split
