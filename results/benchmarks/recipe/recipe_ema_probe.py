"""Probe for recipe_cpu.md (issue 9, fourth screening): at the end of a finished 5-epoch run, does
recomputing the EMA model's BN statistics on training images help, and do the live weights differ from the
EMA? Needs no training: it reads a `train.run --val-size 5000` checkpoint.

    OMP_NUM_THREADS=1 python results/benchmarks/recipe/recipe_ema_probe.py RUN_DIR [SEED] [DATA_DIR]

RUN_DIR holds checkpoint.pt of seed003_net on CIFAR-10; SEED (default 0) must be the run's --seed, which
fixed its validation split. Prints the validation (loss, accuracy) of: the EMA weights as trained; the EMA
weights with BN statistics recomputed (cumulative average, no augmentation) on the first 5,000 and 20,000
training images; the live (non-EMA) weights.
"""
import sys

import torch

from space import build, get_preset
from train.data import load_dataset, train_val_split
from train.engine import evaluate, load_weights
from train.loader import DeviceLoader

run = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
data = train_val_split(load_dataset("cifar10", sys.argv[3] if len(sys.argv) > 3 else "/tmp/cifar10"), 5000, seed=seed)
state = load_weights(f"{run}/checkpoint.pt")


def model_with(weights: dict) -> torch.nn.Module:
    model = build(get_preset("seed003_net"))
    model.load_state_dict(weights)
    return model


def val(model: torch.nn.Module) -> tuple[float, float]:
    return evaluate(model, data.x_test, data.y_test, data.mean, data.std)


print("EMA as trained", val(model_with(state["ema"]["model"])))
for n in (5000, 20000):
    model = model_with(state["ema"]["model"])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
    model.train()
    with torch.no_grad():
        for x, _ in DeviceLoader(data.x_train[:n], data.y_train[:n], data.mean, data.std, 500, "cpu", train=False):
            model(x)
    print(f"EMA, BN statistics recomputed on {n:,} training images", val(model))
print("live weights", val(model_with(state["model"])))
