"""Where an int8 net's time goes, node by node, beside what the latency table books for each layer (issue 47).

    python results/benchmarks/latency_unseen/profile_nets.py --table TABLE.json --set macs20m --nets 12,21,22
    python results/benchmarks/latency_unseen/profile_nets.py --table TABLE.json --blocks conv3/s1/d1/32:32x40,...

Nets: rows (1-based) of measured_<set>.json (round1/ holds round 1's). Each is exported and quantized as
validate.py does, and run by ONNX Runtime (1 thread, batch 1) with its profiler on: per node of the optimized
graph, the median over --runs runs of its time (microseconds, wall clock: run it niced up on a loaded machine,
and compare nodes with nodes, not with CPU-time figures). Printed per node: op, output shape, us; then per
layer of space.latency.block_keys the table's figure for its blocks (ms, without the overhead terms).
--blocks KEY:CINxCOUT,... times single table blocks alone (train.latency's Runner, FULL timing) to set a
layer's table entry beside the same block measured now.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from space.genome import Genome  # noqa: E402
from space.latency import FALLBACK, block_keys, load_table  # noqa: E402
from space.layers import build  # noqa: E402
from train.deploy import export_onnx, quantize_int8  # noqa: E402
from train.latency import FULL, Runner, make_block  # noqa: E402

__all__ = ["profile_net", "main"]

HERE = Path(__file__).resolve().parent
MEAN, STD = [0.5] * 3, [0.25] * 3


def profile_net(g: Genome, tmp: Path, runs: int, int8: bool = True) -> list[tuple[str, str, str, float]]:
    """Per node of the optimized graph (int8, else fp32), in execution order: (name, op, output shape, median
    us)."""
    import onnxruntime as ort  # optional extra (deploy), as in train.deploy

    fp32 = export_onnx(build(g, seed=0).eval(), tmp / "net.onnx", MEAN, STD)
    calib = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    model = quantize_int8(fp32, tmp / "net.int8.onnx", calib, MEAN, STD) if int8 else fp32
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "prof")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    for _ in range(20):
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    durs, info, order = defaultdict(list), {}, []
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name not in info:
            order.append(name)
            shape = e["args"].get("output_type_shape", [{}])
            info[name] = (e["args"].get("op_name", "?"), str(list(shape[0].values())[0]) if shape and shape[0] else "")
        durs[name].append(e["dur"])
    # the first 20 runs are warm-up: keep the last `runs` of each node
    return [(n, *info[n], statistics.median(durs[n][-runs:])) for n in order]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="an onnxruntime-int8 or onnxruntime-fp32 table")
    p.add_argument("--set", default="macs20m", help="which measured_<set>.json")
    p.add_argument("--dir", default=str(HERE / "round1"), help="folder of measured_<set>.json")
    p.add_argument("--nets", default="", help="1-based rows, comma-separated")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--blocks", default="", help="KEY:CINxCOUT (or KEY:CIN) blocks to time alone, comma-separated")
    args = p.parse_args()
    table = load_table(args.table)
    if not table.runtime.startswith("onnxruntime"):
        sys.exit(f"error: {args.table} is a {table.runtime} table; this profiles ONNX Runtime nets")
    int8 = table.runtime == "onnxruntime-int8"
    kind = "int8" if int8 else "fp32"
    if args.nets:
        rows = json.loads((Path(args.dir) / f"measured_{args.set}.json").read_text())["rows"]
        for i in (int(s) for s in args.nets.split(",")):
            g = Genome.from_dict(rows[i - 1]["genome"])
            with tempfile.TemporaryDirectory(prefix="tinynas-prof-") as tmp:
                nodes = profile_net(g, Path(tmp), args.runs, int8)
            row = rows[i - 1]
            print(f"## net {i}: {kind} measured {row[kind + '_ms']:.3f} ms, predicted {row[kind + '_pred_ms']:.3f}; "
                  f"sum of node medians {sum(n[3] for n in nodes) / 1000:.3f} ms")
            for name, op, shape, us in nodes:
                print(f"  {us:8.1f} us  {op:22s} {shape:22s} {name}")
            for name, parts, _ in block_keys(g, int8):
                figs = [table.lookup(k, ci, co)[0] for k, ci, co in parts]
                print(f"  table {name:8s} " + " + ".join(f"{k}[{ci}{'x' + str(co) if co else ''}] {f * 1000:.1f} us"
                                                         for (k, ci, co), f in zip(parts, figs)))
    if args.blocks:
        specs = []
        for item in args.blocks.split(","):
            key, widths = item.split(":")
            cin, _, cout = widths.partition("x")
            specs.append((key, int(cin), int(cout) if cout else None))
        with tempfile.TemporaryDirectory(prefix="tinynas-prof-") as tmp:
            runner = Runner(table.runtime, 1, FULL, Path(tmp))
            mods, xs = [], []
            for key, cin, cout in specs:
                fb = key.startswith(FALLBACK)
                kind, *rest = key.removeprefix(FALLBACK).split("/")
                stride = int(rest[0][1:]) if kind in ("conv3", "dw3", "proj") else 1
                dil = int(rest[1][1:]) if kind in ("conv3", "dw3") else 1
                size = int(rest[-1])
                mods.append(make_block(kind, cin, cout, stride, dil, fb))
                xs.append(torch.randn(1, cin, size, size))
            for (key, cin, cout), ms in zip(specs, runner.time_many(mods, xs)):
                print(f"alone {key}[{cin}{'x' + str(cout) if cout else ''}]: {ms * 1000:.1f} us "
                      f"(table {table.lookup(key, cin, cout)[0] * 1000:.1f} us)")


if __name__ == "__main__":
    main()
