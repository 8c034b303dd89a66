"""Issue 43, part 4: for each feasible preset, the fastest searched net at least as accurate in the trials.

    python results/benchmarks/payoff/efficiency.py TABLE STORAGE:STUDY [STORAGE:STUDY ...]
    e.g. python results/benchmarks/payoff/efficiency.py results/benchmarks/latency_unseen/round3/table_int8.json \\
        sqlite:///results/benchmarks/payoff/cifar10-tpe-100.db:cifar10-tpe-100 \\
        sqlite:///results/benchmarks/payoff/cifar10-random-100.db:cifar10-random-100 \\
        sqlite:///results/benchmarks/payoff/cifar10-tpe-lat045.db:cifar10-tpe-lat045

Pools the completed trials (trained for every trial epoch, not pruned, within the rules) of the studies,
but the presets' own (warm-start) trials: the claim is about searched nets. A
preset's reference is its own trial's validation accuracy in the first study (the studies share the seed and
the split, so the preset trials are the same training; the script prints each study's figure to show it).
Among the pooled trials whose validation accuracy is at least that, it picks the one with the smallest
*predicted* latency on TABLE (space.latency.predict_latency; the pick needs an order, not a measurement), and
prints the `--compare` name (study:NAME#N) that puts it in the 5-seed final table, where its int8 latency is
*measured* through the deploy path. The validation images are the search's own; the test set plays no part.
"""
from __future__ import annotations

import sys

import optuna

from search.lifecycle import Outcome, classify
from search.storage import open_storage
from search.study import stored_settings
from search.trials import genome_of, val_acc
from space import PRESETS, analyze
from space.latency import load_table, predict_latency
from space.rules import check


def main(argv: list[str]) -> int:
    table_path, *specs = argv
    table = load_table(table_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pool = []  # (predicted ms, study, trial, val acc, genome)
    preset_acc: dict[str, list[float]] = {}
    rules = None
    for spec in specs:
        url, _, name = spec.rpartition(":")
        study = optuna.load_study(study_name=name, storage=open_storage(url, create=False))
        rules = rules or stored_settings(study).rules
        for t in study.get_trials(deepcopy=False):
            if classify(t) != Outcome.COMPLETED or val_acc(t) is None:
                continue
            g = genome_of(t)
            if check(g, rules):
                continue
            preset = [p for p, pg in PRESETS.items() if pg == g]
            for p in preset:
                preset_acc.setdefault(p, []).append(val_acc(t))
            if preset:  # a preset's own trial (the warm start) is the hand design, not a searched net
                continue
            pool.append((predict_latency(g, table).ms, name, t.number, val_acc(t), g))
    print(f"{len(pool)} completed searched trials (the presets' own trials left out) pooled from {len(specs)} studies; latency predicted by {table_path} "
          f"({table.runtime})")
    print("| preset | its trial val acc (per study) | predicted ms | fastest net >= it | val acc | predicted ms | "
          "ratio | params | M MACs | --compare |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    for p, accs in preset_acc.items():
        g = PRESETS[p]
        if check(g, rules):
            continue
        ref, ms = accs[0], predict_latency(g, table).ms
        better = sorted((x for x in pool if x[3] >= ref), key=lambda x: (x[0], -x[3]))
        if not better:
            print(f"| {p} | {', '.join(f'{a:.4f}' for a in accs)} | {ms:.3f} | none | | | | | | |")
            continue
        fms, study, number, acc, fg = better[0]
        a = analyze(fg)
        print(f"| {p} | {', '.join(f'{a_:.4f}' for a_ in accs)} | {ms:.3f} | {study} trial {number} | {acc:.4f} | "
              f"{fms:.3f} | {fms / ms:.2f} | {a.params:,} | {a.macs / 1e6:.1f} | study:{study}#{number} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
