"""What makes the trials of one study comparable (the per-dataset defaults live in train.defaults).

A study's `SearchSettings` are stored in its user attrs when it is created. A later run (a resume, or
another worker) with different settings is refused: mixing accuracies measured on different data, budgets
or schedules would make TPE's model and the leaderboard meaningless.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from space import SPACE_VERSION
from train.defaults import DEFAULTS, DatasetDefaults  # the one per-dataset table, shared with train.run
from train.augment import AugmentConfig
from train.engine import TrainConfig

__all__ = ["DEFAULT_PROXY", "SearchError", "DatasetDefaults", "DEFAULTS", "SearchSettings", "parse_val_size"]


class SearchError(Exception):
    """Bad input to a search command; the message is one line (the CLI prints it and exits with 2)."""


def parse_val_size(text: str) -> int | float:
    """'5000' -> 5000 images; '0.1' -> a tenth of the training images."""
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise SearchError(f"--val-size must be a number of images or a fraction, got {text!r}") from None
    if value <= 0 or (isinstance(value, float) and value >= 1):
        raise SearchError(f"--val-size must be a positive count or a fraction in (0, 1), got {text}")
    return value


# The prescreen's proxy when --proxy is not given: the one that ranked 40 trained genomes of the space best
# (Kendall tau 0.34, p = 0.002; the vote 0.05; synflow, jacov and naswot below 0): results/benchmarks/
# proxies_rank_cpu.md. Here, beside the stored default, so that the two cannot differ.
DEFAULT_PROXY = "grad_norm"


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a trial's validation accuracy or feasibility, or which candidates are trained
    (not the device, not N)."""

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
    # The search space's version (space.SPACE_VERSION) the study's trials were sampled from. Stored settings
    # without it predate the field, which came with version 2: they are version 1 (see from_dict).
    space: int = SPACE_VERSION
    # Which candidates get trained (search.prescreen): each trained trial is the best of `prescreen` feasible
    # proposals by `proxy`; 1 = off. Stored like the rest, so that a resume screens as the run it continues.
    prescreen: int = 1
    proxy: str = DEFAULT_PROXY
    # Peak lr multiplier of BN and bias parameters (train.engine.TrainConfig.bias_lr_scale). Stored settings
    # without it predate it: their trials trained at 1.0 (see from_dict).
    bias_lr_scale: float = TrainConfig.bias_lr_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in fields(cls)}
        missing = names - d.keys() - {f.name for f in fields(cls) if f.default is not MISSING}
        if missing:
            raise SearchError(f"the study's stored settings lack {', '.join(sorted(missing))}; "
                              "it was not created by search.run")
        return cls(**{**_BEFORE_FIELD, **{k: d[k] for k in names if k in d}})

    def differing(self, stored: SearchSettings) -> list[str]:
        """The names of the settings that differ from `stored`, in field order."""
        return [f.name for f in fields(self) if getattr(stored, f.name) != getattr(self, f.name)]

    def differences(self, stored: SearchSettings) -> list[str]:
        """'name: stored -> requested' for every setting that differs."""
        return [f"{k}: {getattr(stored, k)!r} -> {getattr(self, k)!r}" for k in self.differing(stored)]

    def train_config(self, epochs: int, device: str, **changes: Any) -> TrainConfig:
        """The recipe the study's trials (and its final retrain) train with, for `epochs` epochs: every
        setting that shapes training comes from here, so the two cannot drift apart."""
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, bias_lr_scale=self.bias_lr_scale,
                           augment=AugmentConfig() if self.augment else None, device=device, seed=self.seed,
                           **changes)


# What a setting added later was for the studies stored before it (a missing key means this, not the default).
_BEFORE_FIELD: dict[str, Any] = {"space": 1, "bias_lr_scale": 1.0}
