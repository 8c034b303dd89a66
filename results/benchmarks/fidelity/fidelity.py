"""Which cheap trial fidelity ranks nets as the final fidelity does? (issue 43, part 1)

    OMP_NUM_THREADS=1 python results/benchmarks/fidelity/fidelity.py run --data-dir /work/data/cifar10 \\
        --worker 0 --workers 2            # and --worker 1 beside it; resumable: finished runs are skipped
    python results/benchmarks/fidelity/fidelity.py report   # tables from whatever runs are finished

The nets: the feasible presets and the first --nets feasible, distinct genomes of the search's own random
construction (space.sample.sample_genomes, sampler seed --sample-seed) under the CPU-scale rules (<= 200,000
parameters, RF >= 44, <= 20 M MACs per image).

The data: CIFAR-10's 50,000 *training* images only (the test set is never read), split once, stratified and
seeded, into
  * val A, 5,000 images: what a trial fidelity is scored on (and its first 2,000: the CPU-scale command's
    --val-size 2000; scoring on both tells what a larger validation split buys);
  * val B, 5,000 images: what the final fidelity is scored on; disjoint from val A, so the two scores share
    no sampling noise of their validation images (a shared split would inflate every tau);
  * a pool of 40,000, whose balanced 18,000 (the CPU-scale search's --subset-train 20000 minus its 2,000
    validation images) and 10,000 are the training images.
Every run trains with the search's own recipe (search.settings.SearchSettings.train_config: batch 128,
lr 0.2, the augmentations, EMA, OneCycle over the run's own epochs) and is scored once after its last epoch.

Fidelities (epochs @ training images): trial ones 2@10k, 3@10k, 2@18k, 3@18k (the earlier payoff runs' trial
recipe), 5@18k; the final one 10@18k, the CPU-scale final retrain's epochs on the search split (what
`--finalists` re-ranks with). Seed 0 for every net and fidelity; seed 1 of the final and of 3@18k for the
noise floor (the same net trained twice). Jobs run cheapest-information first, so a partial run reports.

One JSON line per finished run in runs-<worker>.jsonl beside this file (appended and flushed at once: a kill
loses only the run in progress).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from search.settings import resolve_settings
from space import Genome, analyze
from space.presets import PRESETS
from space.rules import Rules, check
from space.sample import sample_genomes
from train.data import ImageData, load_dataset, train_val_split
from train.engine import predict_images, train

HERE = Path(__file__).resolve().parent
RULES = Rules(max_params=200_000, min_rf=44, max_macs=20_000_000)
FINAL = "10@18000"
TRIALS = ("2@10000", "3@10000", "2@18000", "3@18000", "5@18000")
NOISE = (FINAL, "3@18000")  # trained from seed 1 too


def nets(n: int, sample_seed: int) -> list[tuple[str, Genome]]:
    """(name, genome): the feasible presets, then n feasible distinct sampled genomes."""
    out = [(name, g) for name, g in PRESETS.items() if not check(g, RULES)]
    seen = {g.to_json() for _, g in out}
    sampled = 0
    for g in sample_genomes(100_000, seed=sample_seed, rules=RULES):
        if sampled == n:
            break
        if check(g, RULES) or g.to_json() in seen:
            continue
        seen.add(g.to_json())
        out.append((f"s{sampled:02d}", g))
        sampled += 1
    return out


def splits(data_dir: str) -> dict[str, ImageData]:
    """val A / val B / the training subsets, from the training images only (fixed seeds)."""
    full = load_dataset("cifar10", data_dir, download=False)
    full = replace(full, x_test=full.x_test[:0], y_test=full.y_test[:0])  # the test set is never read
    a = train_val_split(full, 5000, seed=0)  # train: 45,000; test: val A
    b = train_val_split(replace(a, x_test=a.x_test[:0], y_test=a.y_test[:0]), 5000, seed=1)  # train: pool 40,000
    out = {"valA": (a.x_test, a.y_test), "valB": (b.x_test, b.y_test)}
    for n in (10_000, 18_000):
        sub = b.subset(n, None, seed=0)
        out[n] = replace(sub, name=f"cifar10:pool{n}", x_test=a.x_test, y_test=a.y_test)
    return out


def jobs(named: list[tuple[str, Genome]]) -> list[tuple[str, str, int]]:
    """(net, fidelity, seed), most needed information first: the final and the old trial recipe and the cheapest
    for every net, then the noise floor (the chosen trial recipe's second seed, then the final's), then 5@18k
    (the costlier candidate), then the other trial fidelities. (Until 17:10 UTC on 2026-12-07 the order was 2@18k,
    3@10k, 5@18k, then the second seeds; until 22:50 UTC 5@18k came before the second seeds. Runs are keyed by
    (net, fidelity, seed), so the order changes nothing but which runs finish first.)"""
    phases = [[(FINAL, 0), ("3@18000", 0), ("2@10000", 0)], [("3@18000", 1)], [(FINAL, 1)], [("5@18000", 0)],
              [("2@18000", 0), ("3@10000", 0)]]
    return [(name, f, s) for phase in phases for name, _ in named for f, s in phase]


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, data: ImageData) -> float:
    logits, labels, _ = predict_images(model, x, y, data.mean, data.std, "cpu")
    return float((logits.argmax(1) == labels).float().mean())


def run_one(genome: Genome, fidelity: str, seed: int, data: dict) -> dict:
    epochs, n = (int(v) for v in fidelity.split("@"))
    settings, _ = resolve_settings({"dataset": "cifar10", "max_macs": RULES.max_macs, "trial_epochs": epochs,
                                    "seed": 0})
    config = settings.train_config(epochs, "cpu", seed=seed, eval_every=-1, tta=False, checkpoint=None)
    train_data = data[n]
    t0 = time.perf_counter()
    result = train(genome, config, train_data)
    seconds = time.perf_counter() - t0
    xa, ya = data["valA"]
    xb, yb = data["valB"]
    return {"status": result.status, "valA": accuracy(result.model, xa, ya, train_data),
            "valA2000": accuracy(result.model, xa[:2000], ya[:2000], train_data),
            "valB": accuracy(result.model, xb, yb, train_data), "seconds": round(seconds, 1),
            "image_epochs": epochs * n, "fingerprint": config.fingerprint()}


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    named = nets(args.nets, args.sample_seed)
    genomes = dict(named)
    out = HERE / f"runs-{args.worker}.jsonl"
    done = {(r["net"], r["fidelity"], r["seed"]) for r in read_runs()}
    todo = [j for i, j in enumerate(jobs(named)) if i % args.workers == args.worker and j not in done]
    print(f"worker {args.worker}/{args.workers}: {len(named)} nets, {len(todo)} runs to do", flush=True)
    data = splits(args.data_dir)
    for name, fidelity, seed in todo:
        row = run_one(genomes[name], fidelity, seed, data)
        a = analyze(genomes[name])
        row = {"net": name, "fidelity": fidelity, "seed": seed, **row, "params": a.params, "macs": a.macs,
               "rf": a.rf, "genome": genomes[name].to_json(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads()}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"{row['date']}  {name:<12} {fidelity:>9} seed {seed}  valA {row['valA']:.4f}  "
              f"valB {row['valB']:.4f}  {row['seconds']:.0f} s", flush=True)


def read_runs() -> list[dict]:
    rows = []
    for path in sorted(HERE.glob("runs-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _tau(x: list[float], y: list[float]) -> tuple[float, float]:
    return float(stats.kendalltau(x, y)[0]), float(stats.spearmanr(x, y)[0])


CHOSEN = "3@18000"  # the CPU-scale trial recipe the payoff searches run (README.md says why)
BOOT = 2000  # bootstrap resamples of the nets for the tau intervals


def _boot_taus(cols: list[list[float]], final: list[float]) -> np.ndarray:
    """BOOT x len(cols) Kendall taus of each column against `final` over the same resampled nets (seed 0):
    the spread of tau over which nets happened to be drawn, and paired differences between columns."""
    rng = np.random.default_rng(0)
    n, out = len(final), []
    fin = np.asarray(final)
    for _ in range(BOOT):
        idx = rng.integers(0, n, n)
        out.append([stats.kendalltau(np.asarray(c)[idx], fin[idx])[0] for c in cols])
    return np.asarray(out)


def _ci(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    return f"[{np.percentile(v, 2.5):+.2f}, {np.percentile(v, 97.5):+.2f}]"


def top_k(trial: list[float], final: list[float], k: int) -> float:
    """Final accuracy of the best of the k nets the trial fidelity ranks highest (what k finalists keep)."""
    order = sorted(range(len(trial)), key=lambda i: -trial[i])[:k]
    return max(final[i] for i in order)


def cmd_report(args: argparse.Namespace) -> None:
    rows = read_runs()
    acc = {(r["net"], r["fidelity"], r["seed"]): r for r in rows}
    names = sorted({r["net"] for r in rows})
    final = {n: acc[(n, FINAL, 0)]["valB"] for n in names if (n, FINAL, 0) in acc}
    lines = [f"{len(rows)} runs of {len(names)} nets; final fidelity {FINAL} (epochs @ training images) scored on "
             f"val B (5,000); trial fidelities scored on val A (5,000, and its first 2,000)", "",
             "| trial fidelity | nets | image-epochs | τ val A 5k | ρ val A 5k | τ val A 2k | ρ val A 2k "
             "| top-1 final | top-3 | top-5 | best |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    boot = ["", f"95 % bootstrap intervals over the nets ({BOOT} resamples, seed 0; on the nets with both runs): τ "
            f"on val A 5k and 2k, and the paired difference τ(fidelity, 5k) - τ({CHOSEN}, 5k).", "",
            f"| trial fidelity | nets | τ val A 5k | τ val A 2k | τ - τ({CHOSEN}) |", "|---|---:|---|---|---|"]
    for f in (*TRIALS, FINAL):
        common = [n for n in final if (n, f, 0) in acc]
        if len(common) < 3:
            continue
        t5 = [acc[(n, f, 0)]["valA"] for n in common]
        t2 = [acc[(n, f, 0)]["valA2000"] for n in common]
        fin = [final[n] for n in common]
        tau5, rho5 = _tau(t5, fin)
        tau2, rho2 = _tau(t2, fin)
        ep, n_img = (int(v) for v in f.split("@"))
        picks = " | ".join(f"{top_k(t5, fin, k):.4f}" for k in (1, 3, 5))
        lines.append(f"| {f}{' (final, on val A)' if f == FINAL else ''} | {len(common)} | {ep * n_img:,} | "
                     f"{tau5:+.3f} | {rho5:+.3f} | {tau2:+.3f} | {rho2:+.3f} | {picks} | {max(fin):.4f} |")
        chosen = [n for n in common if (n, CHOSEN, 0) in acc]
        if len(chosen) >= 3:
            c5 = [acc[(n, CHOSEN, 0)]["valA"] for n in chosen]
            fin_c = [final[n] for n in chosen]
            b = _boot_taus([[acc[(n, f, 0)]["valA"] for n in chosen], [acc[(n, f, 0)]["valA2000"] for n in chosen],
                            c5], fin_c)
            boot.append(f"| {f}{' (final, on val A)' if f == FINAL else ''} | {len(chosen)} | {_ci(b[:, 0])} | "
                        f"{_ci(b[:, 1])} | " + (f"{_ci(b[:, 0] - b[:, 2])} |" if f != CHOSEN else "(itself) |"))
    lines += boot
    lines += ["", "Noise floor: the same net from seeds 0 and 1. For a trial fidelity, also τ against the final "
              "fidelity (seed 0, val B) of its seed 0 and seed 1 runs on the same nets, and of their mean: how much "
              "of the ranking error is the trial's seed noise.", "",
              "| fidelity | nets | τ seed 0 vs 1 | ρ | mean abs diff | std of the difference / √2 "
              "| τ vs final: seed 0 | seed 1 | mean of both |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in NOISE:
        key = "valB" if f == FINAL else "valA"
        pairs = [(acc[(n, f, 0)][key], acc[(n, f, 1)][key]) for n in names if (n, f, 0) in acc and (n, f, 1) in acc]
        if len(pairs) < 3:
            continue
        x, y = zip(*pairs)
        tau, rho = _tau(list(x), list(y))
        d = [a - b for a, b in pairs]
        vs_final = "| | |"
        both = [n for n in names if (n, f, 0) in acc and (n, f, 1) in acc and n in final]
        if f != FINAL and len(both) >= 3:
            fin = [final[n] for n in both]
            s0, s1 = ([acc[(n, f, s)][key] for n in both] for s in (0, 1))
            vs_final = " | ".join(f"{_tau(c, fin)[0]:+.3f}" for c in (s0, s1, [(a + b) / 2 for a, b in zip(s0, s1)]))
        lines.append(f"| {f} ({key}) | {len(pairs)} | {tau:+.3f} | {rho:+.3f} | "
                     f"{statistics.mean(abs(v) for v in d):.4f} | {statistics.stdev(d) / math.sqrt(2):.4f} | "
                     f"{vs_final} |")
    lines += ["", "| net | params | M MACs | RF | " + " | ".join(f"{f} s0" for f in (*TRIALS, FINAL)) + " |",
              "|---|---:|---:|---:|" + "---:|" * (len(TRIALS) + 1)]
    for n in sorted(names, key=lambda n: -final.get(n, 0)):
        r = next(r for r in rows if r["net"] == n)
        cells = [f"{acc[(n, f, 0)]['valB' if f == FINAL else 'valA']:.4f}" if (n, f, 0) in acc else ""
                 for f in (*TRIALS, FINAL)]
        lines.append(f"| {n} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['rf']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "report.md").write_text(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data-dir", required=True, help="holds cifar-10-batches-py/")
    r.add_argument("--nets", type=int, default=20, help="sampled nets (the feasible presets come on top)")
    r.add_argument("--sample-seed", type=int, default=43)
    r.add_argument("--worker", type=int, default=0)
    r.add_argument("--workers", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--write", action="store_true", help="also write report.md beside this file")
    args = p.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
