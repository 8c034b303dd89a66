"""A/B of search space 2.0 (issue 8) on real data: residual vs plain, and budget-filling vs the old sampler.

    python results/benchmarks/space2_ab/space2_ab.py --data-dir /tmp/cifar10 --out results/benchmarks/space2_ab/space2_ab_cpu.jsonl

Groups, each of feasible genomes (default rules) in the order a seeded uniform sampler draws them:
    residual  the first N of space.suggest_genome with at least one residual add
    plain     the first N of space.suggest_genome without one
    old       the first 2N of the sampler before issue 8 (fixed widths per block, no residual), frozen below
Every genome is trained with the same short budget (train.engine.train, its default recipe) on a
stratified subset of the CIFAR-10 training images and scored on a validation split held out of those
training images; the test set is never read. Results go to a JSON-lines file, one line per genome, and a
rerun skips the genomes already there (so a killed run resumes). `--summary` prints the table; `--stats N`
the feasibility and budget use of N uniform samples of both samplers.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from space import Genome, Head, Layer, analyze, check, suggest_genome
from space.searchspace import RandomTrial
from train.data import load_dataset, train_val_split
from train.engine import TrainConfig, train


def old_suggest_genome(trial) -> Genome:
    """space.searchspace.suggest_genome as of commit 08a8193 (before issue 8), for the comparison."""
    blocks = []
    for b, (lo, hi, step) in enumerate(((16, 64, 8), (16, 128, 8), (32, 192, 8), (32, 256, 8)), 1):
        width = trial.suggest_int(f"c{b}_width", lo, hi, step=step)
        depth = trial.suggest_int(f"c{b}_depth", 1, 3)
        op = trial.suggest_categorical(f"c{b}_op", ("conv3", "dsc3"))
        dilation = trial.suggest_categorical(f"c{b}_dilation", (1, 2, 4))
        layers = [Layer(op, width, dilation=dilation) for _ in range(depth)]
        if b == 1:
            layers[0] = Layer("conv3", width)
        blocks.append(layers)
    for k in range(1, 4):
        down = trial.suggest_categorical(f"down{k}", ("stride", "dilate", "none"))
        last = blocks[k - 1][-1]
        if down == "stride":
            blocks[k - 1][-1] = Layer(last.op, last.out, stride=2)
        elif down == "dilate":
            blocks[k - 1][-1] = Layer(last.op, last.out, dilation=2)
    dropout = trial.suggest_categorical("dropout", (0.0, 0.05, 0.1))
    return Genome(blocks=blocks, head=Head("linear", bias=True, dropout=dropout))


def groups(n: int, seed: int) -> dict[str, list[Genome]]:
    rng, new = random.Random(seed), {"residual": [], "plain": []}
    while min(map(len, new.values())) < n:
        g = suggest_genome(RandomTrial(rng))
        group = new["residual" if any(g.residual) else "plain"]
        if not check(g) and len(group) < n:
            group.append(g)
    rng, old = random.Random(seed), []
    while len(old) < 2 * n:
        g = old_suggest_genome(RandomTrial(rng))
        if not check(g):
            old.append(g)
    return {**new, "old": old}


def sampler_stats(n: int, seed: int) -> str:
    """Feasibility, budget use and residual share of n uniform samples of each sampler (default rules)."""
    out = []
    for name, suggest in (("new", suggest_genome), ("old", old_suggest_genome)):
        rng = random.Random(seed)
        gs = [suggest(RandomTrial(rng)) for _ in range(n)]
        feas = [g for g in gs if not check(g)]
        out.append(f"{name}: n={n} feasible={len(feas) / n:.4f} "
                   f"median_params_feasible={statistics.median(analyze(g).params for g in feas):,.0f} "
                   f"residual_share={sum(any(g.residual) for g in feas) / len(feas):.4f} "
                   f"median_macs_feasible={statistics.median(analyze(g).macs for g in feas):,.0f} "
                   f"over_budget={sum(analyze(g).params > 200_000 for g in gs) / n:.4f} "
                   f"rf_short={sum(analyze(g).rf < 44 for g in gs) / n:.4f}")
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    out = ["| group | n | val acc mean ± std | best | median params | median MACs | median s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    by["budget-filling (residual + plain)"] = by.get("residual", []) + by.get("plain", [])
    for name, rs in by.items():
        if not rs:
            continue
        acc = [r["val_acc"] for r in rs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        out.append(f"| {name} | {len(rs)} | {statistics.mean(acc):.4f} ± {std:.4f} | {max(acc):.4f} | "
                   f"{statistics.median(r['params'] for r in rs):,.0f} | {statistics.median(r['macs'] for r in rs):,.0f} | "
                   f"{statistics.median(r['seconds'] for r in rs):.0f} |")
    # The two comparisons of the issue, with Welch's t-test (unequal variances) on the per-genome accuracies.
    from scipy import stats
    for a, b in (("residual", "plain"), ("budget-filling (residual + plain)", "old")):
        if len(by.get(a, [])) > 1 and len(by.get(b, [])) > 1:
            xa, xb = [r["val_acc"] for r in by[a]], [r["val_acc"] for r in by[b]]
            t = stats.ttest_ind(xa, xb, equal_var=False)
            out.append(f"\n{a} vs {b}: mean {statistics.mean(xa) - statistics.mean(xb):+.4f}, best "
                       f"{max(xa) - max(xb):+.4f}; Welch t = {t.statistic:.2f}, p = {t.pvalue:.3f} "
                       f"(n = {len(xa)}, {len(xb)})")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--out", default="results/benchmarks/space2_ab/space2_ab_cpu.jsonl")
    p.add_argument("--n", type=int, default=8, help="genomes per new-sampler group; the old group has 2n")
    p.add_argument("--seed", type=int, default=0, help="of the samplers")
    p.add_argument("--train", type=int, default=6000, help="training images (stratified subset)")
    p.add_argument("--val", type=int, default=2000, help="validation images held out of the training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--only", help="comma-separated groups to run (default: all)")
    p.add_argument("--limit", type=int, help="train at most this many genomes in this run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--summary", action="store_true", help="print the table of --out and exit")
    p.add_argument("--stats", type=int, metavar="N", help="print the samplers' figures over N samples (seed --seed) "
                   "and exit")
    args = p.parse_args()
    if args.stats:
        print(sampler_stats(args.stats, args.seed))
        return
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if args.summary:
        print(summary(rows))
        return
    done = {(r["group"], r["genome"]) for r in rows}
    data = load_dataset("cifar10", args.data_dir, download=False).subset(args.train + args.val, None, seed=0)
    split = train_val_split(data, args.val, seed=0)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.2 * args.batch_size / 256,
                         device=args.device, seed=0, eval_every=0)
    todo = [(name, g) for name, gs in groups(args.n, args.seed).items()
            if not args.only or name in args.only.split(",") for g in gs]
    # interleave the groups, so a run cut short still compares them on equal terms
    order = sorted(range(len(todo)), key=lambda i: ([g for n, g in todo if n == todo[i][0]].index(todo[i][1]), i))
    trained = 0
    for i in order:
        name, g = todo[i]
        if (name, g.to_json()) in done or (args.limit is not None and trained >= args.limit):
            continue
        t0 = time.time()
        result = train(g, config, split)
        a = analyze(g)
        row = {"group": name, "val_acc": round(float(result.val_acc), 4), "params": a.params, "macs": a.macs,
               "rf": a.rf, "seconds": round(time.time() - t0, 1), "summary": g.summary(), "genome": g.to_json(),
               "train": len(split.y_train), "val": len(split.y_test), "epochs": args.epochs,
               "threads": torch.get_num_threads()}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        trained += 1
        print(f"{name:<9} {row['val_acc']:.4f}  {a.params:>7,} params  {a.macs / 1e6:6.1f} M MACs  "
              f"{row['seconds']:5.0f} s  {g.summary()}", flush=True)


if __name__ == "__main__":
    main()
