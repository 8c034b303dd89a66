"""What makes the trials of one study comparable (the per-dataset defaults live in train.defaults).

A study's `SearchSettings` are stored in its user attrs when it is created. A later run (a resume, or
another worker) with different settings is refused: mixing accuracies measured on different data, budgets
or schedules would make TPE's model and the leaderboard meaningless.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from space import CONSTRUCTION_VERSION, SPACE_VERSION, Rules
from train.defaults import DEFAULTS, DatasetDefaults  # the one per-dataset table, shared with train.run
from train.augment import AugmentConfig
from train.engine import TrainConfig

__all__ = ["DEFAULT_PROXY", "DATASET_SIZES", "SearchError", "DatasetDefaults", "DEFAULTS", "SearchSettings",
           "parse_val_size", "default_val_size"]


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


DATASET_SIZES = {"cifar10": (50_000, 10_000)}  # training / test images of the official set, known without loading


def default_val_size(dataset: str, subset_train: int | None) -> tuple[int | float, str]:
    """(validation size, note) when --val-size is not given: the dataset's default (train.defaults), and for a
    --subset-train smaller than the training set the same fraction of the subset (CIFAR-10: 5,000 of 50,000,
    so 10 %), with a note saying so; the note is "" where nothing was scaled (a default that is already a
    fraction applies to the subset as it is)."""
    default = DEFAULTS[dataset].val_size
    if subset_train is None or isinstance(default, float) or dataset not in DATASET_SIZES:
        return default, ""
    n_all = DATASET_SIZES[dataset][0]
    if subset_train >= n_all:
        return default, ""
    n = max(1, round(subset_train * default / n_all))
    return n, (f"--subset-train {subset_train:,} without --val-size: {n:,} of them held out for validation, the "
               f"default {default / n_all:.0%} ({default:,} of {n_all:,}); --val-size to choose")


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
    # How the space's points become genomes under the rules (space.CONSTRUCTION_VERSION). A study resumes with
    # the construction it was begun with (search.run keeps the stored one); stored settings without it predate
    # the field, which came with version 2: they are version 1 (max_macs not part of the construction).
    construction: int = CONSTRUCTION_VERSION
    # Which candidates get trained (search.prescreen): each trained trial is the best of `prescreen` feasible
    # proposals by `proxy`; 1 = off. Stored like the rest, so that a resume screens as the run it continues.
    prescreen: int = 1
    proxy: str = DEFAULT_PROXY
    # The rest of the training recipe: train.engine.TrainConfig.recipe() (optimizer, schedule, EMA, BN/bias lr,
    # the augmentation schedule and parameters) as sorted (name, value) pairs. Stored so that a study resumed
    # after those defaults have changed trains its later trials, and its final retrain, as it began. Settings
    # stored without it predate it (see from_dict).
    recipe: tuple[tuple[str, Any], ...] = field(default_factory=lambda: _pairs(TrainConfig().recipe()))

    @property
    def rules(self) -> Rules:
        return Rules(self.max_params, self.min_rf, self.max_macs)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recipe": dict(self.recipe)}

    def with_recipe(self, **changes: Any) -> SearchSettings:
        """A copy whose recipe has some settings changed (names as in TrainConfig.recipe())."""
        return replace(self, recipe=_pairs({**dict(self.recipe), **changes}))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if (f.default, f.default_factory) != (MISSING, MISSING)}
        missing = names - d.keys() - optional
        if missing:
            raise SearchError(f"the study's stored settings lack {', '.join(sorted(missing))}; "
                              "it was not created by search.run")
        before = {**_BEFORE_FIELD, "recipe": _pairs({**_RECIPE_BEFORE_FIELD, "bias_lr_scale": d.get("bias_lr_scale", 1.0)})}
        given = {k: d[k] for k in names if k in d}
        if "recipe" in given:
            try:  # a recipe stored by a later version, with settings this one lacks, must not be half-applied
                TrainConfig().with_recipe(given["recipe"])
            except (TypeError, ValueError) as e:
                raise SearchError(f"the study's stored recipe does not fit this version: {e}") from None
            given["recipe"] = _pairs(given["recipe"])
        return cls(**{**before, **given})

    def differing(self, stored: SearchSettings) -> list[str]:
        """The names of the settings that differ from `stored`, in field order."""
        return [f.name for f in fields(self) if getattr(stored, f.name) != getattr(self, f.name)]

    def changes(self, stored: SearchSettings, names: list[str] | None = None) -> list[tuple[str, Any, Any]]:
        """(name, stored value, this value) for every setting that differs, or for those of `names`; the recipe's
        differ one by one, as 'recipe.NAME'."""
        out = []
        for k in self.differing(stored) if names is None else names:
            if k == "recipe":
                old, new = dict(stored.recipe), dict(self.recipe)
                out += [(f"recipe.{r}", old.get(r), new.get(r)) for r in sorted(old.keys() | new.keys())
                        if old.get(r) != new.get(r)]
            else:
                out.append((k, getattr(stored, k), getattr(self, k)))
        return out

    def differences(self, stored: SearchSettings) -> list[str]:
        """'name: stored -> requested' for every setting that differs."""
        return [f"{k}: {old!r} -> {new!r}" for k, old, new in self.changes(stored)]

    def train_config(self, epochs: int, device: str, **changes: Any) -> TrainConfig:
        """The recipe the study's trials (and its final retrain) train with, for `epochs` epochs: every
        setting that shapes training comes from here, so the two cannot drift apart."""
        config = TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                             augment=AugmentConfig() if self.augment else None, device=device, seed=self.seed)
        return replace(config.with_recipe(dict(self.recipe)), **changes)


def _pairs(recipe: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(recipe.items()))


# What a setting added later was for the studies stored before it (a missing key means this, not the default).
_BEFORE_FIELD: dict[str, Any] = {"space": 1, "construction": 1}
# The recipe of the studies stored before `recipe` was (stop 19): TrainConfig's recipe then, written out
# because the defaults may change later, except bias_lr_scale: that is the study's own stored value (stop 18
# stored it alone), 1.0 where it is missing too. (Studies begun before stop 17 trained under an older
# augmentation schedule, which their settings do not record; they resume with this one.)
_RECIPE_BEFORE_FIELD: dict[str, Any] = {
    "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.1, "pct_start": 0.25, "div_factor": 10.0,
    "final_div_factor": 100.0, "anneal": "cos", "augment_start": None, "augment_end": 0.0, "augment_full_epochs": 25,
    "alternate_flip": False, "ema_decay": 0.99,
    "augment.flip_p": 0.5, "augment.affine_p": 0.5, "augment.shift": 0.1, "augment.scale": 0.1, "augment.rotate": 15.0,
    "augment.cutout_p": 0.5, "augment.cutout_size": 16}
