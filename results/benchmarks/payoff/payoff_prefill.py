"""Run some of `search.retrain`'s retrains ahead of it, in other processes (one core each).

    python results/benchmarks/payoff/payoff_prefill.py STORAGE STUDY OUT EPOCHS DATA_DIR SEEDS NET [NET ...]

`search.retrain --finalists K --final-seeds N --compare ...` trains its runs one after another. On a machine
with idle cores, this script trains some of them through the very same function (search.seedrun.retrain)
into the same cache (OUT/runs/, keyed by genome, recipe, seed and images), so that the command, run
afterwards with the same STUDY, OUT and EPOCHS, finds them finished and reuses them. NET is one of
  * a seed preset's name;
  * study:NAME@URL (that study's winner: its stored --finalists re-ranking if any, else its best trial) or
    study:NAME#N@URL (its trial N), trained on STUDY's images under STUDY's final recipe, as
    `--compare study:NAME[#N]` does;
  * finalist:R: STUDY's R-th best trial (1-based, search.trials.ranked_trials' order), trained on the
    search split (training images less the validation ones) from the study's seed and scored on the
    validation images, exactly as `--finalists` re-ranks it (search.finalists.rerank); SEEDS is ignored;
  * rerank:K: search.finalists.rerank itself with K finalists (their runs cached by finalist:R before, or
    trained here), which stores the re-ranking in STUDY, so that `--compare study:STUDY` (and this script's
    study:STUDY@URL) then means its re-ranked winner, as STUDY's own `--finalists K` would choose it.
SEEDS: N (seeds s..s+N-1, s the study's --seed) or seed=K (only seed K: one process per seed).
Nothing here picks a net or reads a test figure to decide anything: it only runs earlier what the command
would run anyway. The data path is search.retrain's (load_study_data, search_split).
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from search.context import FinalPlan, Run
from search.data import load_study_data, search_split
from search.finalists import rerank
from search.seedrun import retrain
from search.storage import open_storage
from search.study import load_study, stored_settings
from search.trials import genome_of, pick_trial, ranked_trials
from space import get_preset


def main(argv: list[str]) -> int:
    storage, name, out, epochs, data_dir, seeds, *nets = argv
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(open_storage(storage, create=False), name, storage)
    settings = stored_settings(study)
    data = load_study_data(settings, data_dir, None, download=False)
    run = Run(study, settings, data, Path(out), storage=storage, device="cpu", final=FinalPlan(int(epochs)),
              split=search_split(data, settings))
    chosen = [int(seeds[5:])] if seeds.startswith("seed=") else range(settings.seed, settings.seed + int(seeds))
    for net in nets:
        if net.startswith("rerank:"):
            rerank(Run(study, settings, data, Path(out), storage=storage, device="cpu", split=run.split,
                       final=FinalPlan(int(epochs), finalists=int(net[len("rerank:"):]))))
            continue
        if net.startswith("finalist:"):
            t = ranked_trials(study.get_trials(deepcopy=False))[int(net[len("finalist:"):]) - 1]
            retrain(run, genome_of(t), settings.seed, f"finalist trial {t.number}", data=run.split)
            continue
        if net.startswith("study:"):
            spec, other_storage = net[len("study:"):].split("@", 1)
            other_name, _, number = spec.partition("#")
            other = load_study(open_storage(other_storage, create=False), other_name, other_storage)
            t = pick_trial(other, int(number) if number else None, trained=True, force=bool(number))
            genome, label = genome_of(t), f"{other_name} trial {t.number}"
        else:
            genome, label = get_preset(net), net
        for seed in chosen:
            retrain(run, genome, seed, label)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
