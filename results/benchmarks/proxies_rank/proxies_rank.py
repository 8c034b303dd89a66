"""How well does each zero-cost proxy rank trained nets? (issue 13: evidence for `search.run --prescreen K`)

    python results/benchmarks/proxies_rank/proxies_rank.py --rows results/benchmarks/space2_ab/space2_ab_cpu.jsonl \\
        --data-dir /tmp/cifar10 --out results/benchmarks/proxies_rank/proxies_rank_cpu.json

Reads JSON-lines rows, each with `genome` (a Genome's JSON) and `val_acc` (its accuracy after training; e.g. the
rows space2_ab.py writes); several --rows files are pooled, and a genome met twice keeps the mean of its
accuracies. For every genome: the net built with --seed (the weights a search trial starts from), every proxy of
train.proxies on one fixed batch of --batch training images (train.proxies.proxy_batch: chosen by --seed,
normalised as training does; the test set is never read), and the rank vote the search uses.

Printed, and written to --out (JSON) with every genome's values, the command, the machine and the date:
  * Kendall tau and Spearman rho of each proxy (and the vote over all genomes) with val_acc, with p-values;
  * pick@K, what a prescreen of K would gain: the mean val_acc of the genome the proxy picks out of K drawn at
    random (--draws subsets, seeded; the vote computed within each subset, as the search does), next to a
    random pick (the mean) and the best possible pick (the subset's maximum);
  * the proxies' seconds per genome on --device (the first genome's include the warm-up).
A rerun with the same --out, batch, seed, dataset and device reuses the values of genomes already there.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy import stats

from search.prescreen import best_first, scores_of
from search.run import machine_info
from space import Genome, build
from train.data import load_dataset
from train.engine import resolve_device
from train.proxies import PROXIES, VOTE, proxy_batch, rank_vote

COLUMNS = (*PROXIES, "vote")


def read_rows(paths: list[str]) -> list[dict]:
    """One row per distinct genome: its JSON and mean val_acc over the rows that hold it."""
    acc: dict[str, list[float]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                Genome.from_json(row["genome"])  # fail early on a bad genome
                acc.setdefault(row["genome"], []).append(float(row["val_acc"]))
    return [{"genome": g, "val_acc": statistics.mean(a), "n_rows": len(a)} for g, a in acc.items()]


def correlations(rows: list[dict]) -> dict[str, dict]:
    acc = [r["val_acc"] for r in rows]
    out = {}
    for name in COLUMNS:
        # A non-finite value ranks last, as in the search: -inf keeps it in the correlation.
        v = [r[name] if math.isfinite(r[name]) else -math.inf for r in rows]
        tau, p_tau = stats.kendalltau(v, acc)
        rho, p_rho = stats.spearmanr(v, acc)
        out[name] = {"kendall_tau": float(tau), "kendall_p": float(p_tau), "spearman_rho": float(rho),
                     "spearman_p": float(p_rho), "non_finite": sum(not math.isfinite(r[name]) for r in rows)}
    return out


def pick_at_k(rows: list[dict], k: int, draws: int, seed: int) -> dict[str, float]:
    """Mean val_acc of each proxy's pick among k random genomes, and of a random and the best pick."""
    rng = random.Random(seed)
    picked = {name: [] for name in COLUMNS}
    rand, best = [], []
    for _ in range(draws):
        group = rng.sample(rows, k)
        acc = [r["val_acc"] for r in group]
        rand.append(statistics.mean(acc))
        best.append(max(acc))
        for name in PROXIES:
            picked[name].append(acc[best_first(scores_of([{name: r[name]} for r in group], name))[0]])
        picked["vote"].append(acc[best_first(rank_vote([{n: r[n] for n in VOTE} for r in group]))[0]])
    return {"k": k, "random": statistics.mean(rand), "best": statistics.mean(best),
            **{name: statistics.mean(v) for name, v in picked.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", action="append", required=True, help="JSON-lines file with genome and val_acc (repeat)")
    p.add_argument("--data-dir", default="/tmp/cifar10", help="holds cifar-10-batches-py/")
    p.add_argument("--dataset", default="cifar10", help="cifar10, or synthetic for a smoke test")
    p.add_argument("--out", default="results/benchmarks/proxies_rank/proxies_rank_cpu.json")
    p.add_argument("--batch", type=int, default=64, help="training images per proxy (the search uses 64)")
    p.add_argument("--seed", type=int, default=0, help="weights and batch (a search's --seed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", default="2,4,8", help="pick@K for these K")
    p.add_argument("--draws", type=int, default=2000, help="random subsets per K")
    args = p.parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    rows = read_rows(args.rows)
    device = resolve_device(args.device)
    config = {"dataset": args.dataset, "batch": args.batch, "seed": args.seed, "device": str(device)}
    out = Path(args.out)
    cached = {}
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("config") == config:
            cached = {r["genome"]: r for r in old.get("genomes", [])}
    data = load_dataset(args.dataset, args.data_dir, download=False)
    x, y = proxy_batch(data, args.batch, seed=args.seed, device=device)
    for i, row in enumerate(rows):
        old = cached.get(row["genome"], {})
        if all(n in old and f"seconds_{n}" in old for n in PROXIES):
            row.update({k: old[k] for n in PROXIES for k in (n, f"seconds_{n}")})
            continue
        model = build(Genome.from_json(row["genome"]), seed=args.seed)
        for name, fn in PROXIES.items():
            t0 = time.perf_counter()
            row[name] = fn(model, x, y, seed=args.seed)
            row[f"seconds_{name}"] = time.perf_counter() - t0
        print(f"{i + 1:>4}/{len(rows)}  val {row['val_acc']:.4f}  "
              + "  ".join(f"{n} {row[n]:.4g}" for n in PROXIES), flush=True)
    for row, vote in zip(rows, rank_vote([{n: r[n] for n in VOTE} for r in rows])):
        row["vote"] = vote
    corr = correlations(rows)
    ks = [int(k) for k in args.k.split(",") if 1 < int(k) <= len(rows)]
    picks = [pick_at_k(rows, k, args.draws, args.seed) for k in ks]
    info = machine_info(args.device)
    lines = [f"n = {len(rows)} genomes (from {', '.join(args.rows)}); batch {args.batch} {args.dataset} training "
             f"images, seed {args.seed}; {info['device_name']} / {info['cpu']}, torch {info['torch']}; "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}", f"command: {command}", "",
             "| proxy | Kendall τ | p | Spearman ρ | p | non-finite | s per genome |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    seconds = {n: statistics.mean(r[f"seconds_{n}"] for r in rows) for n in PROXIES}
    for name in COLUMNS:
        c = corr[name]
        s = f"{seconds[name]:.3f}" if name in seconds else ""
        lines.append(f"| {name} | {c['kendall_tau']:+.3f} | {c['kendall_p']:.3g} | {c['spearman_rho']:+.3f} | "
                     f"{c['spearman_p']:.3g} | {c['non_finite']} | {s} |")
    if picks:
        lines += ["", f"pick@K: mean val_acc of the pick among K random genomes ({args.draws} draws)", "",
                  "| K | random | " + " | ".join(COLUMNS) + " | best |", "|---:" * (len(COLUMNS) + 3) + "|"]
        for pk in picks:
            lines.append(f"| {pk['k']} | {pk['random']:.4f} | " + " | ".join(f"{pk[n]:.4f}" for n in COLUMNS)
                         + f" | {pk['best']:.4f} |")
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info,
                               "threads": torch.get_num_threads(), "config": config, "n": len(rows),
                               "correlations": corr, "pick_at_k": picks,
                               "seconds_per_genome": seconds,
                               "table": "\n".join(lines), "genomes": rows}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
