"""Does fitting the overhead on small nets too remove the small-net bias? (issue 47, round 1's fp32 miss)

    python results/benchmarks/latency_unseen/calibration_mix.py --int8 INT8.json --fp32 FP32.json [--nets 30]

Round 1's tables fitted their overhead terms (space.latency.OVERHEAD_TERMS) on 40 nets sampled under the
default rules (seed 1000), and over-predicted fp32 nets under a 20 M MACs cap (median 7.1 %). This keeps each
table's block entries and refits the overhead terms three ways on nets measured here (validate.py's deploy
path, the minimum of 2 passes over all the nets): on the 40 default-rule calibration nets alone (round 1), on
those plus the first 20 nets under a 20 M MACs cap of seed 1001 (what the build now does: train.latency
CALIBRATION_SMALL, FULL.small_nets), and plus all --nets of them; it reports each fit on the sets fitted and on
two held-out sets of calibration style (seed 1002 under the cap, seed 1003 under the default rules: no
validation seed, and validate.py excludes them). The figures go to --raw (calibration_mix.json); when that file
exists, the script refits on its figures without measuring. Run niced up with one thread on a loaded machine,
the figures compare the fits; they are not final.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from space import Rules  # noqa: E402
from space.machine import cpu_name  # noqa: E402
from space.latency import LatencyTable, load_table, predict_latency  # noqa: E402
from train.latency import FULL, calibration_genomes, fit_overhead  # noqa: E402
from validate import HELD_OUT, MIX_NETS, measure, sampled  # noqa: E402

__all__ = ["measured", "main"]

CAP = 20_000_000  # MACs


def measured(nets: list, passes: int = 2) -> dict[str, list[float]]:
    """Per runtime ("int8", "fp32"): each net's CPU-time ms, the minimum over `passes` passes over all nets
    (a measurement that reads high once is outvoted: round 1 of validate.py)."""
    out = {"int8": [float("inf")] * len(nets), "fp32": [float("inf")] * len(nets)}
    for _ in range(passes):
        for i, g in enumerate(nets):
            with tempfile.TemporaryDirectory(prefix="tinynas-mix-") as tmp:
                m = measure(g, Path(tmp))
            for k in out:
                out[k][i] = min(out[k][i], m[f"{k}_ms"])
    return out


def errors(table: LatencyTable, nets: list, ms: list[float]) -> str:
    err = [(predict_latency(g, table).ms - m) / m * 100 for g, m in zip(nets, ms)]
    return (f"median |err| {statistics.median(abs(e) for e in err):4.1f} %, max {max(abs(e) for e in err):5.1f} %, "
            f"median signed {statistics.median(err):+5.1f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--int8", required=True)
    p.add_argument("--fp32", required=True)
    p.add_argument("--nets", type=int, default=MIX_NETS, help=f"nets per added or held-out set (default {MIX_NETS})")
    p.add_argument("--raw", default=str(Path(__file__).resolve().parent / "calibration_mix.json"),
                   help="the measured figures: written, or read if it exists (then nothing is measured)")
    args = p.parse_args()
    tables = {"int8": load_table(args.int8, "onnxruntime-int8"), "fp32": load_table(args.fp32, "onnxruntime-fp32")}
    sets = {"calib default (seed 1000)": calibration_genomes(FULL.nets),
            "calib small (seed 1001)": sampled(1001, Rules(max_macs=CAP), args.nets),
            **{f"held-out {name} (seed {seed})": sampled(seed, Rules(max_macs=cap), args.nets)
               for name, (seed, cap) in HELD_OUT.items()}}
    raw = Path(args.raw)
    if raw.is_file():  # the figures of an earlier run: refit without measuring again
        ms = json.loads(raw.read_text())["ms"]
    else:
        ms = {}
        for name, nets in sets.items():
            ms[name] = measured(nets)
            print(f"measured {name}: {len(nets)} nets", file=sys.stderr, flush=True)
        raw.write_text(json.dumps({"cpu": cpu_name(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "genomes": {n: [g.to_dict() for g in nets] for n, nets in sets.items()},
                                   "ms": ms}, indent=1))
    names = list(sets)
    for kind, table in tables.items():
        fits = (("default only", 0), (f"default + {FULL.small_nets} small (the build's)", FULL.small_nets),
                (f"default + {args.nets} small", args.nets))
        for label, small in fits:
            nets = sets[names[0]] + sets[names[1]][:small]
            meas = ms[names[0]][kind] + ms[names[1]][kind][:small]
            fitted = LatencyTable({**table.data, **fit_overhead(table.data, nets, meas)})
            v = fitted.verdict
            print(f"{kind} fit on {label} ({len(nets)} nets; leave-one-out {v['table_median_err_pct']:.1f} %, "
                  f"{v['fit']}): " + ", ".join(f"{t} {c * 1000:+.2f} us" for t, c in fitted.data['overhead'].items()))
            for n in names:
                print(f"    {n:30s} {errors(fitted, sets[n], ms[n][kind])}")


if __name__ == "__main__":
    main()
