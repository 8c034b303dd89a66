"""The payoff table from the cached runs of payoff_prefill.py: test accuracy per net over seeds, paired by seed.

    python results/benchmarks/payoff/payoff_table.py OUT WINNER_LABEL

Reads OUT/runs/*.json (search.seedrun.retrain's records; search.compare.seed_run's before 2026-12-07), groups them by net, and prints one markdown row
per net: parameters, MACs, RF, each seed's test accuracy, mean +- sample std, and the difference to
WINNER_LABEL's net with search.compare.paired's 95 % paired t interval and p-value (the same functions the
report's table uses).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from search.compare import paired, seed_stats, verdict
from space import Genome, analyze


def main(out: str, winner: str) -> int:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(Path(out, "runs").glob("*.json")):
        r = json.loads(path.read_text())
        runs[r["label"]][r["seed"]] = r
    w = runs[winner]
    print("| net | params | MACs (M) | RF | test acc per seed | mean +- std | winner - net (95% paired t CI) | p | verdict |")
    print("|---|---:|---:|---:|---|---|---|---:|---|")
    for label in [winner, *sorted(k for k in runs if k != winner)]:
        seeds = sorted(runs[label])
        accs = [runs[label][s]["test_acc"] for s in seeds]
        a = analyze(Genome.from_json(runs[label][seeds[0]]["genome"]))
        st = seed_stats(accs)
        cells = [label, f"{a.params:,}", f"{a.macs / 1e6:.2f}", str(a.rf),
                 ", ".join(f"{x:.4f} (s{s})" for x, s in zip(accs, seeds)), f"{st['mean']:.4f} +- {st['std']:.4f}"]
        if label == winner:
            cells += ["", "", ""]
        else:
            common = [s for s in seeds if s in w]
            p = paired([w[s]["test_acc"] for s in common], [runs[label][s]["test_acc"] for s in common])
            ci = f" [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" if p["ci_low"] is not None else ""
            cells += [f"{p['diff']:+.4f}{ci}", f"{p['p']:.3f}" if p["p"] is not None else "", verdict(p)]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
