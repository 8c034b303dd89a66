"""Validate a latency table (train.latency) against end-to-end measurement, beside the best linear fit on MACs.

    python results/benchmarks/latency/latency_validate.py measure --runtime R [--n 50] [--seed 2026] --out M.json
    python results/benchmarks/latency/latency_validate.py report TABLE.json M.json

(measuring needs no table, so it can run while the table is built; the report predicts from the table)

Samples --n feasible genomes from the space under the default rules (seed 2026; none is one of the table's
calibration nets, seed 1000, nor could a block measurement be one), exports each as train.deploy does
(quantized for an int8 table), measures it with the table's runtime and threads at batch 1 (warm-up, the
minimum of 3 medians of >= 15 runs; one thread: its CPU time, see train.latency), and prints the prediction's and the MACs fit's median / max absolute
percentage error and Spearman rho, over the whole sample and within 30-100 M MACs. The MACs fit is the least
squares line of latency on MACs fitted on these very genomes (in-sample: the baseline at its best).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from space import Genome, Rules, analyze, check  # noqa: E402
from space.latency import load_table, predict_latency  # noqa: E402
from space.sample import sample_genomes  # noqa: E402
from train.latency import FULL, calibration_genomes, net_latency  # noqa: E402

BAND = (30e6, 100e6)


def figures(pred, meas) -> dict:
    err = [abs(p - m) / m * 100 for p, m in zip(pred, meas)]
    rho = spearmanr(pred, meas)[0] if len(pred) > 2 else float("nan")
    return {"n": len(pred), "median_err": statistics.median(err), "max_err": max(err), "rho": float(rho)}


def measure(args) -> None:
    calib = {g.to_json() for g in calibration_genomes(FULL.nets)}  # the table's calibration nets (train.latency)
    genomes = []
    for g in sample_genomes(40 * args.n, seed=args.seed, rules=Rules()):
        if not check(g) and g.to_json() not in calib and g.to_json() not in {x.to_json() for x in genomes}:
            genomes.append(g)
        if len(genomes) == args.n:
            break
    rows, t0 = [], time.time()
    for i, g in enumerate(genomes, 1):
        ms = net_latency(g, args.runtime, args.threads, FULL)
        rows.append({"genome": g.to_dict(), "macs": analyze(g).macs, "params": analyze(g).params, "measured_ms": ms})
        print(f"{i}/{len(genomes)} {rows[-1]['macs'] / 1e6:6.1f} M MACs  measured {ms:.3f} ms  ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"runtime": args.runtime, "threads": args.threads, "seed": args.seed,
                                          "seconds": round(time.time() - t0, 1), "rows": rows}, indent=1))


def report(args) -> None:
    table = load_table(args.table)
    m = json.loads(Path(args.measured).read_text())
    assert m["runtime"] == table.runtime and m["threads"] == table.threads
    rows = m["rows"]
    genomes = [Genome.from_dict(r["genome"]) for r in rows]
    macs = np.array([r["macs"] for r in rows], float)
    meas = [r["measured_ms"] for r in rows]
    lin = list(np.polyval(np.polyfit(macs, meas, 1), macs))
    band = [i for i, x in enumerate(macs) if BAND[0] <= x <= BAND[1]]
    print(f"{table.runtime}, {table.threads} thread(s), {len(rows)} genomes (seed {m['seed']}), {len(band)} within "
          f"30-100 M MACs; measured {min(meas):.3f}-{max(meas):.3f} ms")
    for name, pred in (("table", [predict_latency(g, table).ms for g in genomes]), ("MACs fit", lin)):
        for part, idx in (("all", range(len(rows))), ("30-100 M", band)):
            f = figures([pred[i] for i in idx], [meas[i] for i in idx])
            print(f"| {table.runtime} | {name} | {part} | {f['n']} | {f['median_err']:.1f} % | {f['max_err']:.1f} % | "
                  f"{f['rho']:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("measure")
    a.add_argument("--runtime", required=True)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--n", type=int, default=50)
    a.add_argument("--seed", type=int, default=2026)
    a.add_argument("--out", required=True)
    b = sub.add_parser("report")
    b.add_argument("table")
    b.add_argument("measured")
    args = p.parse_args()
    measure(args) if args.cmd == "measure" else report(args)


if __name__ == "__main__":
    main()
