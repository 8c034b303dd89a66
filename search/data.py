"""The data a search sees (training images split into train/validation) and the final retrain sees.

The search never touches the test set: candidates are scored on a seeded, stratified validation split of
the training images. Only the final retrain of the winner trains on all training images and is evaluated,
once, on the test set.
"""
from __future__ import annotations

from pathlib import Path

import optuna

from space.cli import plural
from train.data import DataError, ImageData, load_dataset, train_val_split
from train.engine import MIN_STEPS

from .settings import SearchError, SearchSettings
from .study import stored_settings

__all__ = ["NORMALISATION_KEY", "check_steps", "load_full", "load_study_data", "search_split", "store_normalisation",
           "study_normalisation"]

# The study user attr holding the input normalisation of its final retrain: {"mean": [r, g, b], "std": [r, g, b]},
# per channel in [0, 1] units, of the training images search.run and search.retrain load (the --subset-train
# ones, if given); search.export writes it into the exported file as MEAN and STD. It also holds "classes", the
# class names in label order (since the user's own datasets), which search.export writes as CLASSES.
NORMALISATION_KEY = "normalisation"


def load_full(dataset: str, data_dir: str | Path | None, subset_train: int | None = None,
              subset_test: int | None = None, seed: int = 0, download: bool = True) -> ImageData:
    """The dataset's training and test images, optionally a balanced random subset of each."""
    return _load(dataset, data_dir, (subset_train, subset_test), seed, download, None)


def load_study_data(settings: SearchSettings, data_dir: str | Path | None, subset_test: int | None = None,
                    download: bool = True) -> ImageData:
    """The images a study with these settings searches and retrains on: its dataset, its --subset-train, and
    for a user's folder of class folders the test images its stored test_size carves out."""
    return _load(settings.dataset, data_dir, (settings.subset_train, subset_test), settings.seed, download,
                 settings.test_size)


def _load(dataset: str, data_dir: str | Path | None, subsets: tuple[int | None, int | None], seed: int,
          download: bool, test_size: int | float | None) -> ImageData:
    subset_train, subset_test = subsets
    data = load_dataset(dataset, data_dir, download=download, test_size=test_size)
    for flag, n, have in (("--subset-train", subset_train, len(data.y_train)),
                          ("--subset-test", subset_test, len(data.y_test))):
        if n is not None and n > have:
            raise SearchError(f"{flag} {n:,} asks for more images than {dataset} has ({have:,}); give at most "
                              f"{have:,} or leave it out")
    if subset_train is not None or subset_test is not None:
        data = data.subset(subset_train, subset_test, seed=seed)
    return data


def store_normalisation(study: optuna.Study, data: ImageData) -> None:
    """Record data's per-channel mean and std (and its training image count) in the study, once: they are fixed
    by its stored settings. On a resume, SearchError (one line) when the training images are not the ones the
    study began with (a user's folder that gained, lost or changed images: its carved splits moved too)."""
    mean, std = [round(float(m), 6) for m in data.mean], [round(float(s), 6) for s in data.std]
    stored = study.user_attrs.get(NORMALISATION_KEY)
    if stored is None:
        study.set_user_attr(NORMALISATION_KEY, {"mean": mean, "std": std, "classes": list(data.classes),
                                                "n_train": len(data.y_train)})
        return
    n_then = stored.get("n_train")  # absent in studies stored before 2026-12-07
    # 2e-6: the stored figures are rounded to 6 decimals; one changed image among thousands moves a mean more
    moved = any(abs(a - b) > 2e-6 for a, b in zip([*stored["mean"], *stored["std"]], [*mean, *std]))
    if (n_then is not None and n_then != len(data.y_train)) or moved:
        then = f"{n_then:,} training images" if n_then is not None else "other training images"
        raise SearchError(f"the images of study {study.study_name!r} changed since it began ({then}, per-channel "
                          f"mean {stored['mean']}; now {len(data.y_train):,}, mean {mean}): its splits would move; "
                          "restore them, or start a new study (--study-name)")


def study_normalisation(study: optuna.Study, data_dir: str | Path | None
                        ) -> tuple[list[float], list[float], tuple[str, ...]]:
    """(mean, std, class names) of the study's final retrain: stored by search.run, or, for a study stored
    before they were, computed from its dataset in data_dir (never downloaded). A study that stored mean and
    std before it stored class names gets () for them where its data cannot be read."""
    stored = study.user_attrs.get(NORMALISATION_KEY)
    if stored and "classes" in stored:
        return list(stored["mean"]), list(stored["std"]), tuple(stored["classes"])
    s = stored_settings(study)
    try:
        data = load_study_data(s, data_dir, download=False)
    except DataError as e:
        if stored:
            return list(stored["mean"]), list(stored["std"]), ()
        raise SearchError(f"study {study.study_name!r} stores no input normalisation (it predates it), and its "
                          f"{s.dataset} training images could not be read to compute it: {e}; give --data-dir"
                          ) from None
    if stored:
        return list(stored["mean"]), list(stored["std"]), data.classes
    return [float(m) for m in data.mean], [float(v) for v in data.std], data.classes


def check_steps(n_images: int, batch_size: int, epochs: int, what: str) -> None:
    """SearchError, before any training, if a run would have too few full batches to train."""
    steps = n_images // batch_size * epochs  # the last partial batch is dropped
    if steps < MIN_STEPS:
        raise SearchError(f"{what}: {n_images} training images in batches of {batch_size} for {plural(epochs, 'epoch')} "
                          f"make {steps} optimizer steps (at least {MIN_STEPS} needed); lower --batch-size or use "
                          "more data or epochs")


def search_split(data: ImageData, settings: SearchSettings) -> ImageData:
    """Train part: training images minus the validation split; held-out ("test") part: the validation split."""
    split = train_val_split(data, settings.val_size, seed=settings.seed)
    check_steps(len(split.y_train), settings.batch_size, settings.trial_epochs, "each trial")
    return split
