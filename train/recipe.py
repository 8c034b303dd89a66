"""`Recipe`: how a run trains, apart from its length, batch, peak lr, seed and device; the one list of those
settings. `train.engine.TrainConfig` extends it. A search study stores it (with the augmentation's own
settings, `TrainConfig.recipe()`), so that its later trials and its final retrain train as its first ones did.

Compatibility lives in field metadata, in one place, and everything else derives from it:
  * a recipe setting added after checkpoints and studies existed names the value that reproduces the runs
    before it (`BEFORE`): a config at that value hashes as before (TrainConfig.fingerprint), and a study's
    stored recipe that lacks it gets that value (search.settings.migrate);
  * each of TrainConfig's own settings (not the recipe's) is tagged `SHAPES` (it changes the result: in the
    fingerprint) or `RUNS` (how it runs only: device, progress, checkpoint place, ...; not in the fingerprint).
Adding a setting is one field with its tag; tests/test_engine.py fails for an untagged one.
How the defaults were chosen, on a validation split: results/benchmarks/recipe/recipe_cpu.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Recipe", "RECIPE_FIELDS", "BEFORE", "before_values", "OWN", "SHAPES", "RUNS"]

BEFORE = "before"  # field metadata key: the value that reproduces the runs made before the setting existed
OWN = "own"  # field metadata key of a TrainConfig setting that is the run's own, not the recipe's
SHAPES = {OWN: "shapes"}  # the run's own, and it changes the result (size, seed, ...)
RUNS = {OWN: "runs"}  # how the run runs only (device, progress, checkpoint place, ...)


@dataclass(frozen=True)
class Recipe:
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # L2 on all parameters but BN and biases, per step
    label_smoothing: float = 0.1  # probability mass spread over the other classes
    pct_start: float = 0.25  # fraction of the steps spent warming up
    div_factor: float = 10.0  # initial lr = lr / div_factor
    final_div_factor: float = 100.0  # final lr = initial lr / final_div_factor
    anneal: str = field(default="cos", metadata={BEFORE: "cos"})  # shape of both OneCycle phases: cos or linear
    # Multipliers of the shift-scale-rotate and cutout probabilities at the first and the last epoch, moving
    # linearly between them (flip keeps its probability). augment_start None: min(1, epochs /
    # augment_full_epochs), because a short run underfits and augmentation only slows it, while a long one
    # needs the regulariser.
    augment_start: float | None = None
    augment_end: float = 0.0
    augment_full_epochs: int = 15  # runs this long or longer start at full strength (chosen at 8-epoch trials)
    # Peak-lr multiplier of the BN and bias parameters (the group without weight decay), as airbench does.
    bias_lr_scale: float = field(default=4.0, metadata={BEFORE: 1.0})
    # Flip each image in alternate epochs instead of at random (the same probability, without repeats); off
    # because it did not help at 5 epochs.
    alternate_flip: bool = field(default=False, metadata={BEFORE: False})
    ema_decay: float = 0.99  # per-step decay of the weight EMA that is evaluated and returned; 0: no EMA
    # Runs of fewer optimizer steps than this evaluate and return a copy of their weights whose BatchNorm
    # statistics are recomputed over the training images (plain, forward only): in a short run the running
    # statistics lag weights that still move fast (seed001 on digits, 2 epochs = 42 steps: test accuracy 0.29
    # raw and 0.12 with the EMA on the running statistics, 0.94 on recomputed ones). 0: never.
    bn_refresh_steps: int = field(default=2000, metadata={BEFORE: 0})


RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


def before_values() -> dict[str, Any]:
    """{name: value before it existed} of the recipe settings added later."""
    return {f.name: f.metadata[BEFORE] for f in fields(Recipe) if BEFORE in f.metadata}
