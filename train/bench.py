"""`python -m train.bench SPEC --dataset ...`: where training time goes, in images per second.

Three figures from one run, on the same model and device:
  pipeline    the real thing: train() on a slice of the training set sized to take about --seconds per
              epoch (loading, augmentation, forward, backward, step); the second epoch is reported
  model_only  forward, backward and step on one pre-loaded, pre-normalised batch: the ceiling
  baseline    (--baseline) the seed-style loop of train.baseline: albumentations per image in 2 workers,
              NCHW float32, batch 128, plain SGD
  compiled    (--compile) the pipeline with torch.compile (TrainConfig.compile): the second epoch is
              reported as the rate, the first epoch's extra seconds over the eager pipeline's first epoch
              as the compilation cost, which a trial pays once per candidate
  graphs      (--cuda-graphs) the same with mode="reduce-overhead": forward and backward as CUDA graphs
Each is measured --repeats times, interleaved, and the median reported; a measurement that fails (say
torch.compile without a C compiler) is recorded under "errors" and skipped after, the others are kept, and the
figures and JSON are printed all the same (exit status 1). It says up front about how long
that takes (--repeats x (3.25 + 1 with --baseline) x --seconds, plus loading) and prints a line to stderr
after each measurement.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn

from space import build, load_spec
from space.cli import CliParser, fail

from .files import DATA_DIR
from .baseline import seed_loop_throughput
from .data import load_dataset
from .device import DeviceError, check_device, synchronize, use_bf16
from .engine import TrainConfig, make_optimizer, train

__all__ = ["model_only_throughput", "main"]


def model_only_throughput(model: nn.Module, cfg: TrainConfig, device: torch.device, seconds: float,
                          in_channels: int = 3, num_classes: int = 10) -> float:
    """Training images per second with data already on the device: no loading, no augmentation."""
    model = model.to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(cfg.batch_size, in_channels, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=10**6)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp = use_bf16(device, cfg.amp)
    # Warm-up (allocator, oneDNN/cuDNN kernel selection) for a quarter of the time, then measure.
    warm_until = time.perf_counter() + seconds / 4
    seen, start, step = 0, None, 0
    while True:
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        seen += cfg.batch_size
        if step % 8:  # look at the clock (and sync the GPU) every 8 steps only, so its queue stays full
            continue
        synchronize(device)
        now = time.perf_counter()
        if start is None:
            if now >= warm_until:
                start, seen = now, 0
        elif now - start >= seconds:
            return seen / (now - start)


def build_parser():
    p = CliParser(prog="python -m train.bench", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("spec", help="preset name or genome JSON file")
    p.add_argument("--dataset", default="cifar10", help="cifar10, digits, synthetic, or the path of "
                   "your own images (a folder of class folders or an .npz)")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each measurement, seconds")
    p.add_argument("--baseline", action="store_true", help="also measure the seed-style loop")
    p.add_argument("--compile", action="store_true", help="also measure the pipeline under torch.compile")
    p.add_argument("--cuda-graphs", action="store_true", help="also measure the pipeline under torch.compile "
                   "mode='reduce-overhead' (forward and backward replayed as CUDA graphs; on a CPU plain compile)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each figure (median)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = check_device(args.device)  # before the data is loaded
    if args.seconds <= 0 or args.repeats < 1 or args.batch_size < 1:
        fail("--seconds, --repeats and --batch-size must be positive")
    genome = load_spec(args.spec)
    data = load_dataset(args.dataset, args.data_dir)
    cfg = TrainConfig(batch_size=args.batch_size, device=str(device), channels_last=not args.no_channels_last,
                      eval_every=0)
    result = {"spec": args.spec, "summary": genome.summary(), "dataset": data.name, "device": str(device),
              "batch_size": args.batch_size, "channels_last": cfg.channels_last,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine()}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    bench = _Measurements(args)
    print(f"{args.repeats} x {', '.join(bench.kinds)} on {device}, {args.seconds:g} s each: about "
          f"{args.repeats * bench.per_repeat / 60:.1f} min{' plus compilation' if args.compile or args.cuda_graphs else ''}",
          file=sys.stderr, flush=True)
    interrupted = False
    try:
        _measure_all(args, genome, data, cfg, device, bench)
    except KeyboardInterrupt:  # what was measured is still printed
        interrupted = True
    _summarise(result, bench.runs, bench.first_epoch, bench.sliced)
    if bench.errors:
        result["errors"] = bench.errors
    if interrupted:
        result["interrupted"] = True
    _print_figures(result, bench.errors)
    if args.json:
        print(json.dumps(result), flush=True)
    return 130 if interrupted else (1 if bench.errors else 0)


class _Measurements:
    """The figures measured so far, interleaved (model-only, pipeline, baseline, model-only, ...) so that a slow
    spell of a shared machine hits all of them alike; each figure is later the median over the repeats."""

    def __init__(self, args) -> None:
        self.runs: dict[str, list[float]] = {"model_only": [], "pipeline": [], "baseline": [], "compiled": [],
                                             "graphs": []}
        # seconds of the first epoch: warm-up (and compilation)
        self.first_epoch: dict[str, list[float]] = {"pipeline": [], "compiled": [], "graphs": []}
        self.errors: dict[str, str] = {}  # a measurement that raised: its error; its later repeats are skipped
        self.sliced = None  # the training slice the pipeline figures train on (sized by the first model-only one)
        # Seconds per repeat: model-only warms up for a quarter of --seconds then measures; the pipeline trains
        # two epochs of about --seconds each; the baseline measures --seconds after a short warm-up.
        self.per_repeat = args.seconds * (1.25 + 2 + (1 if args.baseline else 0) + (2 if args.compile else 0)
                                          + (2 if args.cuda_graphs else 0))
        self.kinds = (["model_only", "pipeline"] + ["baseline"] * args.baseline + ["compiled"] * args.compile
                      + ["graphs"] * args.cuda_graphs)
        self.repeats = args.repeats
        self.t_start = time.perf_counter()

    def measure(self, key: str, fn) -> None:
        """Run one measurement; a failure (no C compiler for Triton, out of memory, ...) is recorded, and the
        figures already measured are kept."""
        if key in self.errors:
            return
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - any failure of one figure must not lose the others
            lines = str(e).strip().splitlines()
            self.errors[key] = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
            print(f"{key}: failed: {self.errors[key]}", file=sys.stderr, flush=True)
            return
        if isinstance(value, tuple):  # (images/s, first epoch's seconds)
            value, first = value
            self.first_epoch[key].append(first)
        self.runs[key].append(value)
        done, total = sum(len(v) for v in self.runs.values()), self.repeats * len(self.kinds)
        print(f"[{done}/{total}] {key}: {value:,.1f} images/s ({time.perf_counter() - self.t_start:.0f} s of about "
              f"{self.repeats * self.per_repeat:.0f} s)", file=sys.stderr, flush=True)


def _measure_all(args, genome, data, cfg: TrainConfig, device: torch.device, bench: _Measurements) -> None:
    """--repeats rounds of every figure asked for, into `bench`."""
    def pipeline(**changes) -> tuple[float, float]:
        run = train(genome, TrainConfig(**{**cfg.__dict__, "epochs": 2, **changes}), bench.sliced)
        return run.history[-1].images_per_s, run.history[0].seconds

    for _ in range(args.repeats):
        bench.measure("model_only", lambda: model_only_throughput(build(genome, seed=0), cfg, device, args.seconds,
                                                                  num_classes=data.num_classes))
        if bench.sliced is None:  # two epochs over a slice sized to last about --seconds each; the second is timed
            rate = bench.runs["model_only"][0] if bench.runs["model_only"] else 1000.0
            n = min(len(data.y_train), max(4 * args.batch_size, int(rate * args.seconds)))
            bench.sliced = data.subset(n, min(len(data.y_test), 512), seed=0)
        bench.measure("pipeline", pipeline)
        for key, mode, wanted in (("compiled", "default", args.compile),
                                  ("graphs", "reduce-overhead", args.cuda_graphs)):
            if wanted:
                bench.measure(key, lambda mode=mode: pipeline(compile=True, compile_mode=mode))
        if args.baseline:
            bench.measure("baseline", lambda: seed_loop_throughput(build(genome, seed=0), data.x_train, data.y_train,
                                                                   data.mean, data.std, args.seconds, device=device))


def _print_figures(result: dict, errors: dict[str, str]) -> None:
    for k in ("model_only_images_per_s", "pipeline_images_per_s", "baseline_images_per_s", "compiled_images_per_s",
              "graphs_images_per_s"):
        if k in result:
            print(f"{k:>24}: {result[k]:>9,.1f}")
    for k in ("pipeline_vs_model_only", "pipeline_vs_baseline", "compiled_vs_pipeline", "graphs_vs_pipeline"):
        if k in result:
            print(f"{k:>24}: {result[k]:>9.2f}x")
    for k, error in errors.items():
        print(f"{k:>24}: failed: {error}")


def _summarise(result: dict, runs: dict[str, list[float]], first_epoch: dict[str, list[float]], sliced) -> None:
    """The medians, ratios and compilation seconds of the figures that were measured, into `result`."""
    for key, values in runs.items():
        if values:
            result[f"{key}_images_per_s"] = round(statistics.median(values), 1)
            result[f"{key}_runs"] = [round(v, 1) for v in values]
    if "pipeline_images_per_s" in result:
        result["images_per_s"] = result["pipeline_images_per_s"]  # the headline: the whole training pipeline
        result["pipeline_images"] = len(sliced.y_train)
    for key, base in (("pipeline", "model_only"), ("compiled", "pipeline"), ("graphs", "pipeline"),
                      ("pipeline", "baseline")):
        if f"{key}_images_per_s" in result and f"{base}_images_per_s" in result:
            result[f"{key}_vs_{base}"] = round(result[f"{key}_images_per_s"] / result[f"{base}_images_per_s"], 3)
    # the first compiled epoch's extra time: mostly compilation (later repeats may hit inductor's cache)
    for key, name in (("compiled", "compile_seconds"), ("graphs", "graphs_compile_seconds")):
        if first_epoch[key] and first_epoch["pipeline"]:
            result[name] = [round(c - e, 1) for c, e in zip(first_epoch[key], first_epoch["pipeline"])]


if __name__ == "__main__":
    from space.genome import GenomeError
    from space.cli import run_cli
    from .data import DataError
    run_cli(main, (GenomeError, DataError, DeviceError))
