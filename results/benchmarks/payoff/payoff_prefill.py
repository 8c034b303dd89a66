"""Run some of `search.retrain --compare`'s (net, seed) retrains ahead of it, in another process.

    python results/benchmarks/payoff/payoff_prefill.py STORAGE STUDY OUT EPOCHS DATA_DIR SEEDS NAME [NAME ...]

`search.retrain --final-seeds N --compare ...` trains its runs one after another. On a machine with idle
cores, this script trains the named nets (seed presets, or study:NAME@STORAGE for another study's winner)
from seeds s..s+SEEDS-1 (or only seed K, for SEEDS `seed=K`: one process per seed) under STUDY's final recipe through the same function and into the same cache
(OUT/runs/, search.seedrun.retrain; search.compare.seed_run when the 2026-12-05 figures were made), so that the retrain command, run afterwards with the same OUT,
EPOCHS and seeds, finds them finished and reuses them. Nothing here picks a net or reads a test figure to
decide anything: it only runs earlier what the command would run anyway.
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from search.context import FinalPlan, Run
from search.data import load_full
from search.seedrun import retrain
from search.study import load_study, stored_settings
from search.storage import open_storage
from search.trials import genome_of, pick_trial
from space import get_preset


def main(argv: list[str]) -> int:
    storage, name, out, epochs, data_dir, seeds, *nets = argv
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(open_storage(storage, create=False), name, storage)
    settings = stored_settings(study)
    data = load_full(settings.dataset, data_dir, settings.subset_train, None, settings.seed, download=False)
    run = Run(study, settings, data, Path(out), storage=storage, device="cpu", final=FinalPlan(int(epochs)))
    for net in nets:
        if net.startswith("study:"):
            other_name, other_storage = net[len("study:"):].split("@", 1)
            other = load_study(open_storage(other_storage, create=False), other_name, other_storage)
            genome, label = genome_of(pick_trial(other, None, trained=True)), f"{other_name} winner"
        else:
            genome, label = get_preset(net), net
        chosen = [int(seeds[5:])] if seeds.startswith("seed=") else range(settings.seed, settings.seed + int(seeds))
        for seed in chosen:
            retrain(run, genome, seed, label)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
