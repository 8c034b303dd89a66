"""Whether this machine runs a latency table's target at the speed the table was measured at.

Two machines can report the same CPU name ("AMD EPYC x 2") and run the same net at speeds 2x apart (seen on
two VMs of this project, docs/latency.md). So the build (train.latency) stores a *reference*: a few fixed
blocks, each as the exact model it timed (ONNX bytes, quantized for int8; for torch-cpu the module is rebuilt
from space.layers), and their milliseconds, about one second of measurement. `check_machine` re-times the
same models here and compares: the ratio (here / there, geometric mean over the blocks) within
`TOLERANCE` says nothing; beyond it, one `warning:` line with the ratio; `rescaled` scales a table's
predictions by it (`--latency-rescale`). Checked only where it means something: on a machine of the table's
CPU name (a table built for a Pi and searched with on a GPU node is for another machine by design) with the
table's runtime installed.
"""
from __future__ import annotations

import base64
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .latency import LatencyError, LatencyTable
from .layers import ConvBN

__all__ = ["TOLERANCE", "REFERENCE_BLOCKS", "REFERENCE_TIMING", "MachineCheck", "cpu_name", "best_median",
           "measure_reference", "reference_ratio", "runtime_present", "check_machine", "rescaled", "checked_table"]

TOLERANCE = 0.15  # |here / there - 1| within which a table is taken to run at its own speed here
# (kind, cin, cout or None, dilation, input size, fallback): the reference blocks, 32x32 inputs; the plain and
# the dilated 3x3 kernel, a pointwise and a depthwise conv; int8 tables add a fallback conv (fp32 inside int8)
REFERENCE_BLOCKS = (("conv3", 32, 32, 1, 32, False), ("conv3", 32, 32, 4, 32, False), ("pw", 64, 64, 1, 32, False),
                    ("dw3", 64, None, 1, 32, False), ("conv3", 32, 32, 1, 32, True))
# warm-up runs, series, runs per series, seconds per series at least: ~0.15 s a block, ~0.8 s in all
REFERENCE_TIMING = (5, 3, 15, 0.05)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what platform says), with the logical core count."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()} x {os.cpu_count()}"


def best_median(run: Callable[[], object], warmup: int, repeats: int, runs: int, seconds: float,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds: after `warmup` runs, the minimum over `repeats` series (each of at least `runs` runs and
    `seconds` seconds) of the median run time by `clock` (the minimum of medians resists a busy machine)."""
    for _ in range(warmup):
        run()
    medians = []
    for _ in range(repeats):
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < runs or time.perf_counter() < end:
            t0 = clock()
            run()
            times.append(clock() - t0)
        medians.append(statistics.median(times))
    return min(medians) * 1e3


def _clock(threads: int) -> Callable[[], float]:
    # one thread: its CPU time (time slices lost to other processes do not count; train.latency says why)
    return time.thread_time if threads == 1 else time.perf_counter


def runtime_present(runtime: str) -> bool:
    """Whether this machine can run the table's runtime (onnxruntime is an optional extra; torch is not)."""
    if not runtime.startswith("onnxruntime"):
        return True
    try:
        import onnxruntime  # noqa: F401  # optional extra (deploy): present or not, both are fine here
    except ImportError:
        return False
    return True


def _torch_block(item: dict[str, Any]):
    """A torch-cpu reference block rebuilt from its description (seeded: the same module everywhere)."""
    torch.manual_seed(0)
    if item["kind"] == "conv3":
        return ConvBN(item["cin"], item["cout"], 3, 1, item["dilation"]).eval()
    if item["kind"] == "pw":
        return ConvBN(item["cin"], item["cout"], 1).eval()
    d = item["dilation"]
    return torch.nn.Conv2d(item["cin"], item["cin"], 3, 1, padding=d, dilation=d, groups=item["cin"], bias=False).eval()


def measure_reference(reference: dict[str, Any], runtime: str, threads: int) -> list[float]:
    """Milliseconds of each reference block here, timed as the build timed it (REFERENCE_TIMING)."""
    clock, out = _clock(threads), []
    for item in reference["items"]:
        x = np.random.default_rng(0).standard_normal((1, item["cin"], item["size"], item["size"])).astype(np.float32)
        if runtime.startswith("onnxruntime"):
            import onnxruntime as ort  # optional extra (deploy)

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.log_severity_level = 3  # errors only
            session = ort.InferenceSession(base64.b64decode(item["onnx"]), options,
                                           providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x}
            out.append(best_median(lambda: session.run(None, feed), *REFERENCE_TIMING, clock))
        else:
            module, tensor = _torch_block(item), torch.from_numpy(x)
            torch.set_num_threads(threads)
            with torch.inference_mode():
                out.append(best_median(lambda: module(tensor), *REFERENCE_TIMING, clock))
    return out


def reference_ratio(here: list[float], there: list[float]) -> float:
    """How much slower `here`'s reference blocks ran than `there`'s: the geometric mean of the per-block ratios."""
    return math.exp(statistics.fmean(math.log(h / t) for h, t in zip(here, there)))


@dataclass(frozen=True)
class MachineCheck:
    """The outcome of check_machine. status: "same" (within TOLERANCE), "differs", "no-reference" (a table
    built before the reference existed), "other-machine" (another CPU name: not checked), "no-runtime"."""

    status: str
    ratio: float | None = None  # this machine's reference ms / the table's (its rescale included)
    source: str = ""

    @property
    def comparable(self) -> bool:
        """Whether a measurement here can be set beside the table's prediction."""
        return self.status == "same"

    def warning(self) -> str | None:
        """The one `warning:` line this check gives, or None where it has nothing to say."""
        if self.status == "differs":
            return (f"warning: {self.source}: its reference blocks take {self.ratio:.2f}x the table's time on this "
                    f"machine ({cpu_name()}), beyond {TOLERANCE:.0%}: its predictions are off by about that here "
                    "(--latency-rescale scales them by it)")
        if self.status == "no-reference":
            return (f"warning: {self.source} holds no reference measurement (built before tinynas stored one), so "
                    "whether this machine runs at its speed cannot be checked; rebuild it with "
                    "python -m train.latency build")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "ratio": None if self.ratio is None else round(self.ratio, 4)}


def check_machine(table: LatencyTable, measure: Callable[[dict, str, int], list[float]] | None = None
                  ) -> MachineCheck:
    """Re-time the table's reference here (`measure`: measure_reference, or a test's fake) and compare it
    with the build's figures times the table's rescale (module docstring)."""
    source = table.source or "the latency table"
    if table.machine != cpu_name():
        return MachineCheck("other-machine", source=source)
    if not runtime_present(table.runtime):
        return MachineCheck("no-runtime", source=source)
    reference = table.data.get("reference")
    if not reference or not reference.get("items"):
        return MachineCheck("no-reference", source=source)
    here = (measure or measure_reference)(reference, table.runtime, table.threads)
    there = [item["ms"] * table.scale for item in reference["items"]]
    ratio = reference_ratio(here, there)
    return MachineCheck("same" if abs(ratio - 1) <= TOLERANCE else "differs", ratio, source)


def rescaled(table: LatencyTable, check: MachineCheck) -> LatencyTable:
    """The table with its predictions scaled by the check's ratio (on top of any earlier rescale), the ratio
    and this machine recorded in it ("rescale"), so a study that stores the table states it."""
    if check.ratio is None:
        raise ValueError("a rescale needs a measured ratio")
    ratio = round(table.scale * check.ratio, 4)
    data = {**table.data, "rescale": {"ratio": ratio, "cpu": cpu_name()}}
    return LatencyTable(data, table.source)


def checked_table(table: LatencyTable, rescale: bool = False, say: Callable[[str], None] | None = None
                  ) -> tuple[LatencyTable, MachineCheck]:
    """(table, check): check_machine's outcome said (its warning line, if any, through `say`: stderr by
    default), and with `rescale` the table rescaled by the measured ratio (one `note:` line). A rescale that
    cannot be measured here is a LatencyError (one line), not a silent unscaled table."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    check = check_machine(table)
    if not rescale:
        line = check.warning()
        if line:
            say(line)
        return table, check
    if check.ratio is None:
        why = {"other-machine": f"it was built on {table.machine}, this is {cpu_name()}",
               "no-runtime": f"{table.runtime} is not installed here",
               "no-reference": "it holds no reference measurement (rebuild it)"}[check.status]
        raise LatencyError(f"--latency-rescale needs the table's reference measured here, and {why}")
    out = rescaled(table, check)
    say(f"note: {check.source}: its reference blocks take {check.ratio:.2f}x the table's time here; predictions "
        f"rescaled by {out.scale:.3f} (recorded with the table)")
    return out, MachineCheck("same", 1.0, check.source)
