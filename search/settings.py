"""What makes the trials of one study comparable, and the per-dataset defaults of the search.

A study's `SearchSettings` are stored in its user attrs when it is created. A later run (a resume, or
another worker) with different settings is refused: mixing accuracies measured on different data, budgets
or schedules would make TPE's model and the leaderboard meaningless.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

__all__ = ["SearchError", "DatasetDefaults", "DEFAULTS", "SearchSettings", "parse_val_size", "base_lr"]


class SearchError(Exception):
    """Bad input to a search command; the message is one line (the CLI prints it and exits with 2)."""


@dataclass(frozen=True)
class DatasetDefaults:
    trial_epochs: int  # brief training of each candidate
    final_epochs: int  # retrain of the winner
    batch_size: int  # images per step
    val_size: int | float  # held-out images (int) or fraction (float) of the training images
    augment: bool  # the flip / shift-scale-rotate / cutout recipe; off where it does not fit the data


DEFAULTS: dict[str, DatasetDefaults] = {
    # 8 epochs of OneCycle separate the seeds' ranking; 60 is what the seeds trained for.
    "cifar10": DatasetDefaults(trial_epochs=8, final_epochs=60, batch_size=256, val_size=5000, augment=True),
    # 1,347 training images of 8x8 digits blown up to 32x32: flips would turn a 2 into something else.
    "digits": DatasetDefaults(trial_epochs=4, final_epochs=15, batch_size=64, val_size=0.2, augment=False),
    # The tests' toy set: a handful of steps is all it needs.
    "synthetic": DatasetDefaults(trial_epochs=2, final_epochs=3, batch_size=32, val_size=0.25, augment=False),
}


def base_lr(batch_size: int) -> float:
    """OneCycle peak learning rate: train.engine's default at its default batch, scaled linearly."""
    from train.engine import TrainConfig
    return TrainConfig.lr * batch_size / TrainConfig.batch_size


def parse_val_size(text: str) -> int | float:
    """'5000' -> 5000 images; '0.1' -> a tenth of the training images."""
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise SearchError(f"--val-size must be a number of images or a fraction, got {text!r}") from None
    if value <= 0 or (isinstance(value, float) and value >= 1):
        raise SearchError(f"--val-size must be a positive count or a fraction in (0, 1), got {text}")
    return value


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a trial's validation accuracy or feasibility (not the device, not N)."""

    dataset: str
    max_params: int
    min_rf: int  # input pixels
    trial_epochs: int
    val_size: int | float
    seed: int
    subset_train: int | None  # training images used at all (None: all of them)
    batch_size: int
    lr: float
    augment: bool
    # Added later, with defaults, so that studies created before them still load (and match the defaults).
    max_macs: int | None = None  # multiply-accumulates per image (None: no limit)
    objectives: str = "accuracy"  # or "accuracy,params" / "accuracy,macs" (search.objectives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in fields(cls)}
        missing = names - d.keys() - {f.name for f in fields(cls) if f.default is not MISSING}
        if missing:
            raise SearchError(f"the study's stored settings lack {', '.join(sorted(missing))}; "
                              "it was not created by search.run")
        return cls(**{k: d[k] for k in names if k in d})

    def differences(self, stored: SearchSettings) -> list[str]:
        """'name: stored -> requested' for every setting that differs."""
        return [f"{f.name}: {getattr(stored, f.name)!r} -> {getattr(self, f.name)!r}" for f in fields(self)
                if getattr(stored, f.name) != getattr(self, f.name)]
