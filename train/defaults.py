"""Per-dataset training defaults, in one table: `train.run`, the search's trials and its final retrain use it.

Command-line flags override single entries (`--batch-size`, `--lr`, `--trial-epochs`, ...). A batch given
without an lr gets the table's lr scaled linearly with the batch (`DatasetDefaults.lr_for`).
The recipe itself (optimizer, schedule, EMA, augmentation schedule, TTA) is `train.engine.TrainConfig`;
how it was chosen, on a validation split, is in results/benchmarks/recipe/recipe_cpu.md.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetDefaults", "DEFAULTS", "USER_DEFAULTS", "defaults_for"]


@dataclass(frozen=True)
class DatasetDefaults:
    batch_size: int  # images per step
    lr: float  # OneCycle peak learning rate at that batch
    trial_epochs: int  # brief training of each search candidate
    final_epochs: int  # the final retrain of the winner (and a sensible train.run length)
    val_size: int | float  # held-out images (int) or fraction (float) of the training images
    augment: bool  # flip / shift-scale-rotate / cutout; off where it does not fit the data

    def lr_for(self, batch_size: int) -> float:
        """Peak learning rate for another batch size: the table's lr scaled linearly."""
        return self.lr * batch_size / self.batch_size


DEFAULTS: dict[str, DatasetDefaults] = {
    # 50,000 images: batch 128 gives 390 steps an epoch; batch and peak lr chosen on the 45k/5k validation
    # split at 5 epochs (results/benchmarks/recipe/recipe_cpu.md: lr 0.2 beat 0.1 and 0.4). 8 trial epochs separate
    # the seeds' ranking; 60 is the seeds' schedule.
    "cifar10": DatasetDefaults(batch_size=128, lr=0.2, trial_epochs=8, final_epochs=60, val_size=5000, augment=True),
    # 1,347 training images of 8x8 digits blown up to 32x32: batch 64 still gives 21 steps an epoch (batch 256
    # gave 5 and 0.82 test after 8 epochs); flips would turn a 2 into something else, so no augmentation.
    "digits": DatasetDefaults(batch_size=64, lr=0.05, trial_epochs=4, final_epochs=15, val_size=0.2, augment=False),
    # The tests' toy set: a handful of steps is all it needs.
    "synthetic": DatasetDefaults(batch_size=32, lr=0.025, trial_epochs=2, final_epochs=3, val_size=0.25,
                                 augment=False),
}

# The user's own images (--dataset PATH, train.userdata): nothing is known of them in advance, so CIFAR-10's
# recipe at batch 64 (lr scaled linearly, 0.1), which also gives a few hundred images enough steps per epoch;
# flips and shifts suit photographs (turn them off with train.run --no-augment where they change the class);
# a fifth of the training images validate each candidate.
USER_DEFAULTS = DatasetDefaults(batch_size=64, lr=0.1, trial_epochs=8, final_epochs=30, val_size=0.2, augment=True)


def defaults_for(dataset: str) -> DatasetDefaults:
    """The table's row of a known dataset, USER_DEFAULTS for the user's own (a path)."""
    return DEFAULTS.get(dataset, USER_DEFAULTS)
