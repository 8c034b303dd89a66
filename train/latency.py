"""`python -m train.latency build --runtime R --threads 1 -o FILE.json`: measure, on the machine that will run
the net, the building blocks the search space produces, and write the latency table (space.latency reads it).

Runtimes: onnxruntime-fp32 and onnxruntime-int8 (each block exported with torch's exporter as train.deploy
exports a net, and quantized with train.deploy's settings), torch-cpu (PyTorch eager, inference mode). Every
block is timed at batch 1 with `--threads` intra-op threads: warm-up runs, then the minimum over repeats of
the median of a series of runs (the minimum of medians resists a busy machine); with one thread the time is
the calling thread's CPU time, which time slices lost to other processes do not inflate. Then whole nets
sampled from the space (seeds 1000 and 1001, default rules and a 20 M MACs cap: never the validation's) are
measured the same way, each the minimum over 2 passes over all of them, and the overhead terms are fitted
(space.latency), and the table's error on them is set beside the best linear fit of latency on MACs: the
table says if it does not beat MACs. The build re-times its reference blocks (space.machine) as it goes and
stops, writing nothing, if the machine's speed moved by more than 10 % while it measured (STEADY).
"""
from __future__ import annotations

import base64
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from space import DEFAULT_MAX_PARAMS, Rules, analyze, check
from space.latency import (BLOCKS_VERSION, FALLBACK, FORMAT, FORMAT_VERSION, ODD8, OVERHEAD_TERMS, RUNTIMES, LatencyError,
                           LatencyTable, block_key, overhead_features, predict_latency)
from space.layers import Classifier, ConvBN, Projection, build
from space.machine import REFERENCE_BLOCKS, best_median, measure_reference, reference_ratio
from space.sample import sample_genomes
from space.cli import CliParser

from .deploy import DEPLOY_EXTRA, cpu_name, export_onnx, missing, onnx_session, quantize_float, quiet_export

__all__ = ["Timing", "QUICK", "FULL", "CALIBRATION_SEED", "CALIBRATION_SMALL", "STEADY", "CHECK_EVERY", "block_specs",
           "make_block", "Runner", "measure", "STEP_PROBE", "channel_step", "build_reference", "SteadyCheck",
           "calibration_genomes", "fit_overhead", "build_table", "net_latency", "main"]

WIDTHS = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512)  # channels of the grid
CALIBRATION_SEED = 1000  # the whole nets the overhead is fitted on (validation samples use other seeds)
# (seed, max MACs) of the small calibration nets: the overhead fitted on default-rule nets alone (most of them
# 30-200 M MACs) over-predicted fp32 nets under a 20 M MACs cap by a median 7.1 % (issue 47, round 1); a
# search under a --max-macs or latency budget predicts such nets, so the fit sees them too
CALIBRATION_SMALL = (1001, 20_000_000)
# The build re-times its reference (space.machine) before the blocks, every CHECK_EVERY chunks of blocks
# (~30 s at one thread), after the blocks and after the whole nets; if the checks spread by more than STEADY
# (max / min - 1 of the geometric-mean ratio to the first), the machine's speed moved while the table was
# measured and the build stops with one error line instead of writing a table that mixes two speeds. Seen on
# this project's VM (issue 47): an idle machine ran the same reference blocks 2x apart on runs hours apart,
# and a build whose own calibration said it was off (round 2: leave-one-out 7.9 % against round 1's 2.9 %)
# had been measured at half the speed of the builds before and after it.
STEADY = 0.10
CHECK_EVERY = 10


class Timing:
    """How long each figure is measured: warm-up runs, then `repeats` series of at least `runs` runs
    (and at least `seconds` each); the figure is the minimum of the series' medians. The overhead is fitted
    on `nets` calibration nets under the default rules and `small_nets` under CALIBRATION_SMALL's cap, each
    the minimum over `passes` passes over all of them."""

    def __init__(self, warmup: int, repeats: int, runs: int, seconds: float, widths: tuple[int, ...], nets: int,
                 small_nets: int = 0, passes: int = 1, steady: float | None = None):
        self.warmup, self.repeats, self.runs, self.seconds, self.widths, self.nets = (warmup, repeats, runs, seconds,
                                                                                       widths, nets)
        # steady: the reference's allowed spread during the build (STEADY), None: recorded, never refused
        self.small_nets, self.passes, self.steady = small_nets, passes, steady


FULL = Timing(warmup=5, repeats=3, runs=15, seconds=0.01, widths=WIDTHS, nets=40, small_nets=20, passes=2,
              steady=STEADY)
# tests: shape, not figures (so a busy test machine's spread is recorded, not refused)
QUICK = Timing(warmup=1, repeats=1, runs=2, seconds=0.0, widths=(8, 32), nets=2, small_nets=1)


def _conv_keys() -> list[tuple[int, int, int]]:
    """(stride, dilation, input size) of the 3x3 convs the space produces: stride 2 only undilated."""
    keys = [(1, d, s) for d in (1, 2, 4, 8) for s in (32, 16, 8, 4)]
    return keys + [(2, 1, s) for s in (32, 16, 8)]


def _grid2(widths: tuple[int, ...], k2: int, max_params: int, first: tuple[int, ...] = ()) -> tuple[list, list, list]:
    """(cin axis, cout axis, mask): a point is measured when the cell below it is within max_params (so any
    layer within the budget finds its four corners)."""
    xs, ys = [*first, *widths], list(widths)
    prev = lambda axis, i: axis[max(i - 1, 0)]  # noqa: E731
    mask = [[prev(xs, i) * prev(ys, j) * k2 <= max_params for j in range(len(ys))] for i in range(len(xs))]
    return xs, ys, mask


def block_specs(widths: tuple[int, ...], max_params: int, int8: bool = False) -> dict[str, dict]:
    """Every table key (space.latency.block_key) with its axes: {"kind", "stride", "dilation", "size", "cin",
    "cout" (2-D kinds), "mask", "fallback"}; with `int8`, also FALLBACK + key for each conv block that can fall
    back to fp32 (space.latency._falls_back: the convs and the stride-1 projections)."""
    specs: dict[str, dict] = {}

    def add(kind: str, stride: int, dilation: int, size: int, **axes) -> None:
        specs[block_key(kind, size, stride, dilation)] = dict(kind=kind, stride=stride, dilation=dilation, size=size,
                                                              **axes)

    # int8 depthwise convs: ONNX Runtime's QLinearConv runs C channels in ~2x the time of C - 8 or C + 8 when
    # C is an odd multiple of 8 (72 channels at 32x32: 0.073 ms, 64: 0.037, 80: 0.046; every dilation, at
    # 16x16 too), so the grid also holds w + 8 beside each width and the lookup interpolates within the width's
    # class (space.latency ODD8); the grid's widths are all even multiples of 8 but 8 itself
    dw_widths = sorted({*widths, *(w + 8 for w in widths if w >= 16)}) if int8 else list(widths)
    for s, d, size in _conv_keys():
        xs, ys, mask = _grid2(widths, 9, max_params, (3,) if size == 32 else ())
        add("conv3", s, d, size, cin=xs, cout=ys, mask=mask)
        add("dw3", s, d, size, cin=dw_widths, **({ODD8: True} if int8 else {}))
    for size in (32, 16, 8, 4):
        xs, ys, mask = _grid2(widths, 1, max_params)
        add("pw", 1, 1, size, cin=xs, cout=ys, mask=mask)
        add("add", 1, 1, size, cin=list(widths))
        add("head", 1, 1, size, cin=list(widths))
        for s in (1, 2) if size > 4 else (1,):
            xs, ys, mask = _grid2(widths, 1, max_params, (3,) if size == 32 else ())
            add("proj", s, 1, size, cin=xs, cout=ys, mask=mask)
    fallbacks = {FALLBACK + k: {**sp, "fallback": True} for k, sp in specs.items()
                 if sp["kind"] in ("conv3", "dw3", "pw") or sp["kind"] == "proj" and sp["stride"] == 1}
    return {**specs, **fallbacks} if int8 else specs


class _Add(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x


class _PassThrough(nn.Module):
    """The block and its input as a second output: the input feeds two consumers, as at a residual block's
    entry, so ONNX Runtime's int8 fusion leaves the conv in fp32 as it does there (a fallback block)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block(x), x


def make_block(kind: str, cin: int, cout: int | None, stride: int, dilation: int, fallback: bool = False
               ) -> nn.Module:
    """The module a table entry times, built from the same classes as the net (space.layers); a fallback
    block is wrapped so that it runs as ONNX Runtime runs it inside an int8 net where it falls back."""
    if fallback:
        return _PassThrough(make_block(kind, cin, cout, stride, dilation))
    if kind == "conv3":
        return ConvBN(cin, cout, 3, stride, dilation)
    if kind == "dw3":
        return nn.Conv2d(cin, cin, 3, stride, padding=dilation, dilation=dilation, groups=cin, bias=False)
    if kind == "pw":
        return ConvBN(cin, cout, 1)
    if kind == "proj":
        return Projection(cin, cout, stride)
    if kind == "add":
        return _Add()
    if kind == "head":
        return Classifier(cin, 10)
    raise ValueError(f"unknown block kind {kind!r}")


def _best_median(run: Callable[[], object], t: Timing, clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds: the minimum over t.repeats series of the median run time by `clock` (space.machine's
    best_median: the machine check re-times the reference exactly as the build timed it)."""
    return best_median(run, t.warmup, t.repeats, t.runs, t.seconds, clock)


class Runner:
    """Times torch modules with one runtime: ONNX Runtime fp32/int8 (exported, quantized, then a session),
    or PyTorch eager on the CPU."""

    def __init__(self, runtime: str, threads: int, timing: Timing, workdir: Path):
        self.runtime, self.threads, self.timing, self.workdir = runtime, threads, timing, workdir
        torch.set_num_threads(threads)
        # One thread: the run happens in this thread, so its CPU time is the latency an idle core would give,
        # and time slices lost to other processes on a shared machine are not counted (wall time of a 2 ms
        # run on a core shared by 4 processes is ~4x, of a 0.2 ms run ~1x: it distorts the table's shape).
        # More threads: wall time (the other threads' work would be missed).
        self.clock = time.thread_time if threads == 1 else time.perf_counter

    def time_many(self, modules: list[nn.Module], inputs: list[torch.Tensor]) -> list[float]:
        """Milliseconds of each module on its input, batch 1."""
        if self.runtime == "torch-cpu":
            out = []
            for m, x in zip(modules, inputs):
                m = m.eval()
                with torch.inference_mode():
                    out.append(_best_median(lambda: m(x), self.timing, self.clock))
            return out
        paths = self._export(modules, inputs)
        return [self._time_onnx(p, x) for p, x in zip(paths, inputs)]

    def _export(self, modules: list[nn.Module], inputs: list[torch.Tensor]) -> list[Path]:
        """Each block as its own ONNX model (and quantized for int8 with train.deploy's settings). The blocks
        use torch's TorchScript exporter: 10 ms a block instead of the dynamo exporter's 0.5 s, and the same
        ONNX ops once ONNX Runtime has fused BatchNorm into the conv (Conv, Relu, Add, Slice, ...)."""
        paths = []
        for i, (m, x) in enumerate(zip(modules, inputs)):
            p = self.workdir / f"b{i}.onnx"
            with quiet_export(), torch.no_grad():
                torch.onnx.export(m.eval(), (x,), str(p), dynamo=False, input_names=["input"])
            if self.runtime == "onnxruntime-int8":
                q = self.workdir / f"b{i}.int8.onnx"
                quantize_float(p, q, np.random.default_rng(i).standard_normal(tuple(x.shape)).astype(np.float32))
                p = q
            paths.append(p)
        return paths

    def _time_onnx(self, path: Path, x: torch.Tensor) -> float:
        session = onnx_session(path, self.threads)
        name = session.get_inputs()[0].name
        feed = {name: x.numpy()}
        return _best_median(lambda: session.run(None, feed), self.timing, self.clock)

    def time_net(self, genome, path: Path | None = None) -> float:
        """Milliseconds of the whole net at batch 1, exported (and quantized) as train.deploy does."""
        return self.time_nets([genome])[0]

    def _net(self, genome, stem: str) -> nn.Module | Path:
        """The net as this runtime runs it: the torch module, or its ONNX file (quantized for int8) in workdir."""
        model = build(genome, seed=0).eval()
        if self.runtime == "torch-cpu":
            return model
        fp32 = self.workdir / f"{stem}.onnx"
        export_onnx(model, fp32, [0.5] * 3, [0.25] * 3)
        if self.runtime == "onnxruntime-int8":
            calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
            return quantize_float(fp32, self.workdir / f"{stem}.int8.onnx", calib)
        return fp32

    def time_nets(self, genomes: list, passes: int = 1, progress: Callable[[int, int], None] = lambda n, total: None
                  ) -> list[float]:
        """Milliseconds of each whole net at batch 1: the minimum over `passes` passes over all of them: a
        measurement that reads high once is outvoted (issue 47: in round 1's validation, 3 of 50 nets read ~1.5x
        their time in their one measurement, and their prediction, steadily, on re-measuring; the cause is
        not known)."""
        nets = []
        for n, g in enumerate(genomes):
            nets.append(self._net(g, f"net{n}"))
            progress(n + 1, len(genomes))
        best = [float("inf")] * len(nets)
        for _ in range(passes):
            for n, (g, net) in enumerate(zip(genomes, nets)):
                x = torch.randn(1, g.in_channels, 32, 32)
                if isinstance(net, Path):
                    ms = self._time_onnx(net, x)
                else:
                    with torch.inference_mode():
                        ms = _best_median(lambda: net(x), self.timing, self.clock)
                best[n] = min(best[n], ms)
        return best


def measure(runner: Runner, specs: dict[str, dict], progress: Callable[[int, int], None], chunk: int = 48
            ) -> dict[str, dict]:
    """The table's entries: every spec's grid timed with `runner` (`progress(done, total)` after each chunk)."""
    jobs = []  # (key, i, j or None, module, input)
    for key, sp in specs.items():
        for i, cin in enumerate(sp["cin"]):
            size = sp["size"]
            x = torch.randn(1, cin, size, size)
            if "cout" in sp:
                jobs += [(key, i, j, make_block(sp["kind"], cin, cout, sp["stride"], sp["dilation"],
                                                sp.get("fallback", False)), x)
                         for j, cout in enumerate(sp["cout"]) if sp["mask"][i][j]]
            else:
                jobs.append((key, i, None, make_block(sp["kind"], cin, None, sp["stride"], sp["dilation"],
                                                      sp.get("fallback", False)), x))
    entries = {k: {"cin": sp["cin"], **({"cout": sp["cout"], "ms": [[None] * len(sp["cout"]) for _ in sp["cin"]]}
                                         if "cout" in sp else {"ms": [None] * len(sp["cin"])}),
                   **({ODD8: True} if sp.get(ODD8) else {})}
               for k, sp in specs.items()}
    done = 0
    for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]
        times = runner.time_many([j[3] for j in part], [j[4] for j in part])
        for (key, i, j, _, _), ms in zip(part, times):
            if j is None:
                entries[key]["ms"][i] = round(ms, 5)
            else:
                entries[key]["ms"][i][j] = round(ms, 5)
        done += len(part)
        progress(done, len(jobs))
    return entries


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _feasible(n: int, seed: int, rules: Rules) -> list:
    out: list = []
    for g in sample_genomes(20 * n + 20, seed=seed, rules=rules) if n else ():
        if not check(g, rules):
            out.append(g)
        if len(out) == n:
            break
    return out


def calibration_genomes(n: int, rules: Rules = Rules(), small: int = 0) -> list:
    """n feasible genomes sampled under `rules` with CALIBRATION_SEED, then `small` under the same rules capped
    at CALIBRATION_SMALL's MACs with its seed (seeds distinct from any validation sample's)."""
    seed, cap = CALIBRATION_SMALL
    small_rules = replace(rules, max_macs=min(cap, rules.max_macs or cap))
    return _feasible(n, CALIBRATION_SEED, rules) + _feasible(small, seed, small_rules)


def _fit(feats: np.ndarray, resid: np.ndarray, measured: np.ndarray, relative: bool) -> np.ndarray:
    """Least squares of resid on feats; `relative`: each net weighted by 1 / its latency (relative errors)."""
    w = 1.0 / measured if relative else np.ones_like(measured)
    return np.linalg.lstsq(feats * w[:, None], resid * w, rcond=None)[0]


def _held_out_errors(predict_one: Callable[[np.ndarray, int], float], measured: np.ndarray) -> list[float]:
    """Leave-one-out: each net predicted by a fit on the others (predict_one(kept mask, i)), in % error."""
    n = len(measured)
    return [abs(predict_one(np.arange(n) != i, i) - measured[i]) / measured[i] * 100 for i in range(n)]


def fit_overhead(data: dict, genomes: list, measured: list[float]) -> dict:
    """Least squares of (measured - sum of the blocks) on the overhead terms (space.latency.OVERHEAD_TERMS:
    the blocks were timed alone), weighted by 1 / latency or not, whichever predicts held-out nets better
    (leave-one-out); with fewer nets than terms + 2, only the fixed cost. The verdict: the table's and the
    linear MACs fit's leave-one-out median errors on these nets."""
    int8 = data["runtime"] == "onnxruntime-int8"
    base = LatencyTable({**data, "overhead": {}})
    sums = np.array([predict_latency(g, base).ms for g in genomes])
    feats = np.array([[1.0] + [sum(f[k] for _, _, f in overhead_features(g, int8))
                               for k in range(1, len(OVERHEAD_TERMS))] for g in genomes])
    if not int8:  # no fallback blocks: that column is all zero
        feats[:, 2] = 0.0
    y = np.array(measured, float)
    resid, macs = y - sums, np.array([analyze(g).macs for g in genomes], float)
    if len(genomes) < len(OVERHEAD_TERMS) + 2:
        # a rough table (--quick) can overestimate its blocks; a fixed cost is a cost, never negative (a negative
        # one would claim a net runs faster than its own blocks): it then predicts its blocks' sum, high
        coef = np.array([max(resid.mean(), 0.0)] + [0.0] * (len(OVERHEAD_TERMS) - 1))
        relative, held = False, None
    else:
        held = {rel: statistics.median(_held_out_errors(
            lambda keep, i: sums[i] + feats[i] @ _fit(feats[keep], resid[keep], y[keep], rel), y))
            for rel in (False, True)}
        relative = held[True] < held[False]
        coef = _fit(feats, resid, y, relative)
    if len(genomes) >= 3:
        lin = _held_out_errors(lambda keep, i: np.polyval(np.polyfit(macs[keep], y[keep], 1), macs[i]), y)
    else:
        lin = [abs(float(np.mean(y)) - m) / m * 100 for m in y]
    fitted = [abs(p - m) / m * 100 for p, m in zip(sums + feats @ coef, y)]
    verdict = {"nets": len(genomes), "fit": "relative" if relative else "absolute",
               "table_median_err_pct": round(float(held[relative] if held else statistics.median(fitted)), 2),
               "macs_median_err_pct": round(float(statistics.median(lin)), 2),
               "held_out": held is not None}
    verdict["beats_macs"] = bool(verdict["table_median_err_pct"] < verdict["macs_median_err_pct"])
    return {"overhead": {t: float(c) for t, c in zip(OVERHEAD_TERMS, coef)},
            "calibration": {"seed": CALIBRATION_SEED, "small": {"seed": CALIBRATION_SMALL[0],
                                                                "max_macs": CALIBRATION_SMALL[1]},
                            "measured_ms": [round(m, 5) for m in measured],
                            "genomes": [g.to_dict() for g in genomes], "verdict": verdict}}


STEP_PROBE = (64, 72, 80, 88, 96)  # channels of the probe's convs (16x16 input): three points inside one cell


def channel_step(runner: Runner, fallback: bool = False) -> tuple[int, dict[str, list[float]]]:
    """The channel granularity the runtime computes convs in, and the probe's figures: 3x3 and pointwise
    convs at STEP_PROBE widths; the step (8, 16 or 32) whose rounding up best predicts the inner three from
    the outer two. ONNX Runtime's fp32 convs on AVX-512 compute 16 channels at a time (72 costs what 80
    does); its int8 convs and the fallback convs of an int8 net do not (fp32 table error 8.0 % -> 4.2 %)."""
    kinds = ("conv3", "pw")
    ms = runner.time_many([make_block(k, w, w, 1, 1, fallback) for k in kinds for w in STEP_PROBE],
                          [torch.randn(1, w, 16, 16) for _ in kinds for w in STEP_PROBE])
    probe = {k: [round(v, 5) for v in ms[i * len(STEP_PROBE):(i + 1) * len(STEP_PROBE)]] for i, k in enumerate(kinds)}
    lo, hi = STEP_PROBE[0], STEP_PROBE[-1]

    def error(step: int) -> float:
        out = 0.0
        for t in probe.values():
            for w, m in zip(STEP_PROBE[1:-1], t[1:-1]):
                est = t[0] + (t[-1] - t[0]) * (min(-(-w // step) * step, hi) - lo) / (hi - lo)
                out += ((est - m) / m) ** 2
        return out

    return min((8, 16, 32), key=error), probe


def build_reference(runner: Runner) -> dict:
    """The table's reference (space.machine): REFERENCE_BLOCKS (the fallback one for int8 only), each exported
    as the blocks are (the ONNX bytes are stored: the check re-times the very same model) and timed by
    space.machine.measure_reference, the code the check runs."""
    int8 = runner.runtime == "onnxruntime-int8"
    blocks = [b for b in REFERENCE_BLOCKS if int8 or not b[5]]
    items = [{"kind": k, "cin": cin, "cout": cout, "dilation": d, "size": size, "fallback": fb,
              "key": (FALLBACK if fb else "") + block_key(k, size, 1, d)} for k, cin, cout, d, size, fb in blocks]
    if runner.runtime.startswith("onnxruntime"):
        paths = runner._export([make_block(k, cin, cout, 1, d, fb) for k, cin, cout, d, size, fb in blocks],
                               [torch.randn(1, b[1], b[4], b[4]) for b in blocks])
        for item, path in zip(items, paths):
            item["onnx"] = base64.b64encode(path.read_bytes()).decode()
    reference = {"items": items}
    for item, ms in zip(items, measure_reference(reference, runner.runtime, runner.threads)):
        item["ms"] = round(ms, 5)
    return reference


class SteadyCheck:
    """The build's reference re-timed as it goes: `check(where)` times it again and stops the build (a
    LatencyError, one line) when the checks so far spread beyond STEADY; `summary()` is what the table keeps."""

    def __init__(self, reference: dict, runner: Runner, log: Callable[[str], None], steady: float | None = STEADY):
        self.reference, self.runner, self.log, self.steady = reference, runner, log, steady
        self.first = [item["ms"] for item in reference["items"]]
        self.all: list[list[float]] = [self.first]
        self.ratios: list[tuple[str, float]] = [("start", 1.0)]

    def check(self, where: str) -> None:
        ms = measure_reference(self.reference, self.runner.runtime, self.runner.threads)
        ratio = reference_ratio(ms, self.first)
        self.all.append(ms)
        self.ratios.append((where, ratio))
        values = [r for _, r in self.ratios]
        spread = max(values) / min(values) - 1
        self.log(f"reference at {where}: {ratio:.3f}x its time at the start (spread so far {spread:.1%})")
        if self.steady is not None and spread > self.steady:
            lo, hi = min(self.ratios, key=lambda wr: wr[1]), max(self.ratios, key=lambda wr: wr[1])
            raise LatencyError(
                f"the machine's speed moved while the table was measured: its reference blocks took {lo[1]:.2f}x "
                f"(at {lo[0]}) to {hi[1]:.2f}x (at {hi[0]}) their time at the start, beyond {self.steady:.0%}; a table "
                "mixing two speeds would mislead: build it again with nothing else running")

    def summary(self) -> dict:
        """The reference as the table stores it: each block's median over the checks (ms), and the checks."""
        for n, item in enumerate(self.reference["items"]):
            item["ms"] = round(statistics.median(ms[n] for ms in self.all), 5)
        return {**self.reference, "checks": [{"at": w, "ratio": round(r, 4)} for w, r in self.ratios],
                "steady": self.steady}


def build_table(runtime: str, threads: int, timing: Timing, max_params: int = DEFAULT_MAX_PARAMS,
                log: Callable[[str], None] = print) -> dict:
    """Measure and return the table (a JSON-able dict)."""
    specs = block_specs(timing.widths, max_params, runtime == "onnxruntime-int8")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tinynas-latency-") as tmp:
        runner = Runner(runtime, threads, timing, Path(tmp))

        steady = SteadyCheck(build_reference(runner), runner, log, timing.steady)
        chunks = 0

        def progress(done: int, total: int) -> None:
            nonlocal chunks
            chunks += 1
            log(f"blocks {done}/{total} measured ({time.perf_counter() - t0:.0f} s)")
            if chunks % CHECK_EVERY == 0 or done == total:
                steady.check(f"blocks {done}/{total}")

        entries = measure(runner, specs, progress)
        families = {"": False, **({FALLBACK: True} if runtime == "onnxruntime-int8" else {})}
        steps = {prefix: channel_step(runner, fb) for prefix, fb in families.items()}
        log("channel step: " + ", ".join(f"{p or 'blocks'} {s}" for p, (s, _) in steps.items()))
        data = {"format": FORMAT, "version": FORMAT_VERSION, "blocks_version": BLOCKS_VERSION, "runtime": runtime,
                "threads": threads, "batch": 1, "max_params": max_params, "widths": list(timing.widths),
                "machine": {"cpu": cpu_name(), "arch": platform.machine(), "host": platform.node(),
                            "platform": platform.platform()},
                "versions": _versions(), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "entries": entries,
                "channel_step": {p: s for p, (s, _) in steps.items()},
                "channel_probe": {"widths": list(STEP_PROBE), **{p or "blocks": pr for p, (_, pr) in steps.items()}}}
        genomes = calibration_genomes(timing.nets, Rules(max_params=max_params), timing.small_nets)

        def exported(done: int, total: int) -> None:
            log(f"whole nets {done}/{total} exported ({time.perf_counter() - t0:.0f} s)")

        measured = runner.time_nets(genomes, timing.passes, exported)
        log(f"whole nets {len(genomes)}/{len(genomes)} measured ({timing.passes} pass(es), "
            f"{time.perf_counter() - t0:.0f} s)")
        steady.check("the end")
        data["reference"] = steady.summary()
    data.update(fit_overhead(data, genomes, measured))
    data["seconds"] = round(time.perf_counter() - t0, 1)
    return data


def net_latency(genome, runtime: str, threads: int = 1, timing: Timing = FULL) -> float:
    """The measured milliseconds of a whole net at batch 1 (exported and quantized like a deployed one)."""
    with tempfile.TemporaryDirectory(prefix="tinynas-latency-") as tmp:
        return Runner(runtime, threads, timing, Path(tmp)).time_net(genome)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m train.latency", description=__doc__.split(":", 1)[1].strip())
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="measure the blocks and write a latency table")
    b.add_argument("--runtime", required=True, help=f"one of: {', '.join(RUNTIMES)}")
    b.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    b.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS, help="the widest blocks measured: those of "
                   f"nets within this many parameters (default {DEFAULT_MAX_PARAMS:,})")
    b.add_argument("--quick", action="store_true", help="a tiny table in seconds (tests; its figures are rough)")
    b.add_argument("-o", "--out", required=True, help="the table, a .json file")
    b.error = p.error  # type: ignore[method-assign]  # one error line, not usage
    args = p.parse_args(argv)
    if args.runtime not in RUNTIMES:
        raise LatencyError(f"unknown --runtime {args.runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if args.threads < 1 or args.max_params < 1:
        raise LatencyError("--threads and --max-params must be positive integers")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise LatencyError(f"{out.parent}: no such folder for -o")
    if args.runtime.startswith("onnxruntime") and missing():
        raise LatencyError(f"--runtime {args.runtime} needs {', '.join(missing())} (the deploy extra): {DEPLOY_EXTRA}")
    timing = QUICK if args.quick else FULL
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    data = build_table(args.runtime, args.threads, timing, args.max_params, log)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out)  # never a half-written table
    v = data["calibration"]["verdict"]
    print(f"{out}: {args.runtime}, {args.threads} thread(s) on {data['machine']['cpu']}, {data['seconds']:.0f} s; "
          f"on {v['nets']} sampled nets the table's median error is {v['table_median_err_pct']:.1f} %, a linear fit "
          f"on MACs' {v['macs_median_err_pct']:.1f} %" + (" (each net predicted by a fit on the others)"
                                                          if v.get("held_out") else ""))
    if not v["beats_macs"]:
        print(f"warning: on this target the table does not beat MACs (median error {v['table_median_err_pct']:.1f} % "
              f"vs {v['macs_median_err_pct']:.1f} %); a --max-macs budget predicts as well", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from space.cli import run_cli

    from .deploy import DeployError

    run_cli(main, (LatencyError, DeployError))
