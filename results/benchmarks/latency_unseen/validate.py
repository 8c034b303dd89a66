"""Latency tables on nets no part of their making saw (issue 47): one command, figures to files, a summary.

    python results/benchmarks/latency_unseen/validate.py --int8 INT8.json --fp32 FP32.json [--nets 50]

Two validation sets, sampled with seeds used nowhere else in this project's latency work: round 3 (these
defaults) 50 feasible nets under the default rules (seed 7007) and 50 under --max-macs 20000000 (seed 7008);
round 1 used seeds 7001 and 7002 (round1/), round 2 7005 and 7006 (round2/), a trial run of this script 7003
and 7004. None is one of the
tables' calibration nets (train.latency calibration_genomes: seeds 1000 and 1001) or of the nets used while
finding the causes (`used_genomes`: the 12 profiled for the odd-8 depthwise widths, seed 4747; rounds 1 and
2's validation nets; calibration_mix.py's held-out sets, seeds 1002 and 1003). Each net is exported and quantized
through train.deploy's own export_onnx and quantize_int8 (calibrated on 64 seeded random uint8 images: the
scales do not change which kernels run) and timed with ONNX Runtime, 1 thread, batch 1: warm-up, then the
minimum of 3 medians of >= 15 runs, by the thread's CPU time and by wall clock, in --passes passes over all
the nets of a set (default 3); a net's figure is its minimum over the passes (round 1 measured once: 3 of its
50 small nets read ~1.5x their time in that one measurement, and their prediction, steadily, on re-measuring;
the cause is not known: a net that reads high once is outvoted by its other passes). Each table's prediction
is set against the CPU-time figure: median and max absolute % error and Spearman rho, overall and within
30-100 M MACs, beside the least-squares line of latency on MACs fitted on the same nets (in-sample: the
baseline at its best). Each table's machine check (space.machine) is run first and reported.

Writes to --out (default: this folder): measured_<set>.json (per net: genome, MACs, ms by both clocks, each
pass's CPU-time ms, predictions), summary.md (the tables, and how many nets' passes differed by more than
10 %), and prints the summary. --nets 3 makes a trial run in ~1 minute.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from space import Rules, analyze, check  # noqa: E402
from space.genome import Genome  # noqa: E402
from space.latency import load_table, predict_latency  # noqa: E402
from space.layers import build  # noqa: E402
from space.machine import best_median, check_machine, cpu_name  # noqa: E402
from space.sample import sample_genomes  # noqa: E402
from train.deploy import export_onnx, onnx_session, quantize_int8  # noqa: E402
from train.latency import FULL, calibration_genomes  # noqa: E402

BAND = (30e6, 100e6)
# name: (sampler seed, --max-macs); round 1: 7001, 7002; round 2: 7005, 7006; 7003 and 7004 served a 2-net
# trial run of this script
SETS = {"default": (7007, None), "macs20m": (7008, 20_000_000)}
PROFILED_SEED = 4747  # the nets profiled while finding the int8 misses (excluded here)
HERE = Path(__file__).resolve().parent
MIX_NETS = 30  # nets per set of calibration_mix.py (its --nets default)
# calibration_mix.py's held-out sets: (seed, max MACs)
HELD_OUT = {"small": (1002, 20_000_000), "default": (1003, None)}
SPREAD = 0.10  # a net whose passes differ by more than this (relative to its minimum) is counted in the summary
MEAN, STD = [0.5] * 3, [0.25] * 3


def profiled_genomes() -> list:
    """The 12 nets profiled for issue 47: seed 4747, default rules, a dilation-4 conv, < 25 M MACs."""
    out = []
    for g in sample_genomes(4000, seed=PROFILED_SEED, rules=Rules()):
        a = analyze(g)
        if not check(g) and any(i.layer.dilation == 4 for i in a.layers) and a.macs < 25e6:
            out.append(g)
        if len(out) == 12:
            break
    return out


def sampled(seed: int, rules: Rules, n: int) -> list:
    """The first n feasible nets of `seed` under `rules` (calibration_mix.py's sets)."""
    out = []
    for g in sample_genomes(200 * n, seed=seed, rules=rules):
        if not check(g, rules):
            out.append(g)
        if len(out) == n:
            break
    return out


def used_genomes() -> set[str]:
    """The genomes (as JSON) of every net the tables' making or the search for causes used: the calibration
    nets, the 12 profiled nets, earlier rounds' validation nets (round*/measured_*.json) and
    calibration_mix.py's held-out sets."""
    used = calibration_genomes(FULL.nets, small=FULL.small_nets) + profiled_genomes()
    for seed, max_macs in HELD_OUT.values():
        used += sampled(seed, Rules(max_macs=max_macs), MIX_NETS)
    out = {g.to_json() for g in used}
    for path in sorted(HERE.glob("round*/measured_*.json")):
        out |= {Genome.from_dict(r["genome"]).to_json() for r in json.loads(path.read_text())["rows"]}
    return out


def genomes(seed: int, max_macs: int | None, n: int, exclude: set[str]) -> list:
    rules, out, seen = Rules(max_macs=max_macs), [], set(exclude)
    for g in sample_genomes(200 * n, seed=seed, rules=rules):
        if not check(g, rules) and g.to_json() not in seen:
            out.append(g)
            seen.add(g.to_json())
        if len(out) == n:
            break
    return out


def timed(path: Path) -> tuple[float, float]:
    """(CPU-time ms, wall ms) of one batch-1 run: the minimum of 3 medians of >= 15 runs, after 5 warm-ups."""
    session = onnx_session(path, 1)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    run = lambda: session.run(None, feed)  # noqa: E731
    return best_median(run, 5, 3, 15, 0.01, time.thread_time), best_median(run, 5, 3, 15, 0.01, time.perf_counter)


def export(g, tmp: Path, stem: str = "net") -> tuple[Path, Path]:
    """(fp32, int8) ONNX files of the net in tmp, through train.deploy's export and quantization."""
    fp32 = export_onnx(build(g, seed=0).eval(), tmp / f"{stem}.onnx", MEAN, STD)
    calib = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    return fp32, quantize_int8(fp32, tmp / f"{stem}.int8.onnx", calib, MEAN, STD)


def measure(g, tmp: Path) -> dict:
    """One measurement of one net (both runtimes, both clocks)."""
    fp32, int8 = export(g, tmp)
    (f_cpu, f_wall), (i_cpu, i_wall) = timed(fp32), timed(int8)
    return {"fp32_ms": f_cpu, "fp32_wall_ms": f_wall, "int8_ms": i_cpu, "int8_wall_ms": i_wall}


def measure_passes(nets: list, tmp: Path, passes: int, label: str) -> list[dict]:
    """Per net: measure's figures, each the minimum over `passes` passes over all the nets (the CPU-time
    figures of each pass kept under <kind>_passes_ms); the wall figure is the one of the pass whose CPU time
    was the minimum."""
    files, t0 = [], time.time()
    for i, g in enumerate(nets, 1):
        files.append(export(g, tmp, f"net{i}"))
        print(f"{label} {i}/{len(nets)} exported [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
    rows: list[dict] = [{"fp32_passes_ms": [], "int8_passes_ms": []} for _ in nets]
    for n in range(passes):
        for row, (fp32, int8) in zip(rows, files):
            for kind, path in (("fp32", fp32), ("int8", int8)):
                cpu, wall = timed(path)
                if not row[f"{kind}_passes_ms"] or cpu < min(row[f"{kind}_passes_ms"]):
                    row[f"{kind}_ms"], row[f"{kind}_wall_ms"] = cpu, wall
                row[f"{kind}_passes_ms"].append(round(cpu, 5))
        print(f"{label} pass {n + 1}/{passes} timed [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
    return rows


def figures(pred: list[float], meas: list[float]) -> dict:
    if not meas:
        return {"n": 0}
    err = [abs(p - m) / m * 100 for p, m in zip(pred, meas)]
    rho = float(spearmanr(pred, meas)[0]) if len(meas) > 2 else float("nan")
    return {"n": len(meas), "median_err": statistics.median(err), "max_err": max(err), "rho": rho}


def cell(f: dict) -> str:
    if not f["n"]:
        return "| 0 | - | - | - |"
    return f"| {f['n']} | {f['median_err']:.1f} % | {f['max_err']:.1f} % | {f['rho']:.3f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--int8", required=True, help="the onnxruntime-int8 table")
    p.add_argument("--fp32", required=True, help="the onnxruntime-fp32 table")
    p.add_argument("--nets", type=int, default=50, help="nets per validation set (default 50)")
    p.add_argument("--passes", type=int, default=3, help="passes over each set's nets; a net's figure is its "
                   "minimum (default 3)")
    p.add_argument("--out", default=str(HERE), help="folder for the figures")
    args = p.parse_args()
    if args.passes < 1 or args.nets < 1:
        sys.exit("error: --nets and --passes must be positive integers")
    tables = {"int8": load_table(args.int8, "onnxruntime-int8"), "fp32": load_table(args.fp32, "onnxruntime-fp32")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Machine: {cpu_name()}; ONNX Runtime, 1 thread, batch 1, CPU time of the calling thread; "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}; the minimum of {args.passes} passes per net.", ""]
    for kind, t in tables.items():
        c = check_machine(t)
        lines.append(f"- {kind} table {t.source} (built {t.data.get('created', '?')} on {t.machine}): machine check "
                     f"{c.status}" + (f", reference ratio here / there {c.ratio:.3f}" if c.ratio else ""))
        checks = [ck["ratio"] for ck in t.data.get("reference", {}).get("checks", [])]
        if checks:
            lines.append(f"  (its build's own checks of the reference spread {max(checks) / min(checks) - 1:.1%})")
    status = {kind: [check_machine(t)] for kind, t in tables.items()}  # re-checked after each set, below
    lines += ["", "| set | runtime | predictor | nets | n | median err | max err | rho |", "|---|---|---|---|---|---|---|---|"]
    exclude, spread = used_genomes(), []
    for name, (seed, max_macs) in SETS.items():
        nets, rows, t0 = genomes(seed, max_macs, args.nets, exclude), [], time.time()
        exclude |= {g.to_json() for g in nets}
        with tempfile.TemporaryDirectory(prefix="tinynas-unseen-") as tmp:
            timings = measure_passes(nets, Path(tmp), args.passes, name)
        for i, (g, timing) in enumerate(zip(nets, timings), 1):
            row = {"genome": g.to_dict(), "macs": analyze(g).macs, **timing}
            row.update({f"{k}_pred_ms": predict_latency(g, t).ms for k, t in tables.items()})
            rows.append(row)
            print(f"{name} {i}/{len(nets)}: {row['macs'] / 1e6:.1f} M MACs, int8 {row['int8_ms']:.3f} ms (pred "
                  f"{row['int8_pred_ms']:.3f}), fp32 {row['fp32_ms']:.3f} ms (pred {row['fp32_pred_ms']:.3f}); "
                  f"passes int8 {row['int8_passes_ms']}, fp32 {row['fp32_passes_ms']}", file=sys.stderr, flush=True)
        for kind in tables:
            wide = sum(max(r[f"{kind}_passes_ms"]) > (1 + SPREAD) * min(r[f"{kind}_passes_ms"]) for r in rows)
            spread.append(f"- {name} {kind}: {wide} of {len(rows)} nets' {args.passes} passes differed by more than "
                          f"{SPREAD * 100:.0f} % (the minimum is used)")
        for kind, t in tables.items():
            status[kind].append(check_machine(t))
        (out / f"measured_{name}.json").write_text(json.dumps({"seed": seed, "max_macs": max_macs, "cpu": cpu_name(),
                                                               "seconds": round(time.time() - t0, 1), "rows": rows},
                                                              indent=1))
        macs = np.array([r["macs"] for r in rows], float)
        band = [i for i, m in enumerate(macs) if BAND[0] <= m <= BAND[1]]
        for kind in tables:
            meas = [r[f"{kind}_ms"] for r in rows]
            lin = list(np.polyval(np.polyfit(macs, meas, 1), macs)) if len(rows) > 1 else meas
            for label, pred in (("table", [r[f"{kind}_pred_ms"] for r in rows]), ("MACs fit", lin)):
                for part, idx in (("all", range(len(rows))), ("30-100 M", band)):
                    f = figures([pred[i] for i in idx], [meas[i] for i in idx])
                    lines.append(f"| {name} (seed {seed}) | {kind} | {label} | {part} " + cell(f))
    moved = []
    for kind, cs in status.items():
        ratios = [c.ratio for c in cs if c.ratio]
        moved.append(f"- {kind}: reference ratio here / the table's, at the start and after each set: "
                     + ", ".join(f"{r:.3f}" for r in ratios) + ("" if all(c.comparable for c in cs) else
                                                               " (NOT COMPARABLE: beyond the machine check's tolerance)"))
    text = "\n".join(lines + [""] + spread + [""] + moved) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
