"""`python -m search.bench [--device cuda] [--json]`: how fast would `search.run --trials 100` be here?

Measures, on the given device, the aggregate training throughput (images/s, all jobs together) of typical
genomes for 1, 2, 4, ... concurrent jobs (processes, as `search.run --jobs N` runs them), then projects
the wall time of the whole search plus the final retrain from it. `--device cuda` (or auto on a CUDA node)
uses every visible GPU, `cuda:0,cuda:2` those: the jobs are placed round-robin over them as search.run
places its workers (job k on the k-th GPU), and the job counts go up to 8 a GPU.

Measurement: --genomes feasible genomes drawn from the search space (space.sample, the default rules:
200,000 parameters, RF 44), trained by train.engine.train (the real pipeline: uint8 data on the device,
batched augmentation, channels_last, bf16 on CUDA) on synthetic 32x32 images at the dataset's batch size
(on CPU at batch 32 by default, so that a measurement fits in seconds: CPU images/s hardly depend on the
batch, see results/benchmarks/train_speed/cpu_seed003_net.md).
Each job first trains every genome for one short epoch (warm-up: allocator, kernel selection), waits for
the others at a barrier, then trains every genome (rotated, so jobs do not all train the same one at once)
for --seconds / --genomes seconds each. A job's rate = its images / its training seconds; the aggregate is
the sum over the jobs, which ran over the same window.

Noise: on a busy machine a run measures the other work, not this one. So every job count is measured until
two of its runs agree within AGREE (at least 2 runs, at most --repeats), and its figure is their mean; N jobs
cannot train more than N times the images of one, so a speed-up above N x SPEEDUP_SLACK over the first job
count means that figure was disturbed: the first count is measured again once, and a speed-up still above
it, or a count whose runs never agreed, is printed as a `warning:` line, its rows marked unreliable (and
"reliable": false in --json), and --jobs is recommended (best_jobs) only from reliable rows, or not at all.

Projection (the assumptions are printed with it, and in --json):
  search  = trials x mean epochs per trained trial x (train images + val images / EVAL_SPEEDUP) / aggregate
            mean epochs = (1 - pruned fraction) x trial epochs + pruned fraction x the epochs a pruned trial
            trains (the median pruner's first verdict, after trial_epochs // 2 + 1 epochs)
  final   = final epochs x all training images / one job's rate + test images / (EVAL_SPEEDUP x that rate)
Not counted: rejected candidates (no training, milliseconds each), model building, start-up, data loading
(seconds once per worker).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from space import Genome, Rules, analyze, check
from space.sample import sample_genomes
from train.augment import AugmentConfig
from train.data import canonical_dataset, load_dataset, make_synthetic
from train.defaults import defaults_for
from train.device import available_cpus, check_devices
from train.engine import TrainConfig, train

from .cli import ERRORS, make_parser
from .settings import DATASET_SIZES, SearchError
from .workers import auto_jobs, cpu_threads, place

__all__ = ["EVAL_SPEEDUP", "PRUNED_FRACTION", "DATASET_SIZES", "AGREE", "SPEEDUP_SLACK", "sample_typical", "Load", "measure",
           "job_devices", "Workload", "settle", "assess", "project", "main"]

EVAL_SPEEDUP = 3.0  # evaluation images per training image-time: forward only (no backward, no step, no augment)
PRUNED_FRACTION = 0.5  # assumed share of trained trials the median pruner stops (it prunes below-median curves)
AGREE = 0.25  # two runs of one job count agree when they differ by at most this share of the larger
SPEEDUP_SLACK = 1.15  # a speed-up above jobs/first jobs x this is noise, not parallelism (timer and scheduling slack)


def sample_typical(n: int, seed: int = 0, rules=None) -> list:
    """The first n genomes the search space's uniform sampler draws that meet `rules` (default: space.Rules())."""
    out, rules = [], rules or Rules()
    for g in sample_genomes(100 * n + 100, seed=seed, rules=rules):
        if not check(g, rules):
            out.append(g)
            if len(out) == n:
                return out
    raise SearchError(f"found fewer than {n} feasible genomes")  # pragma: no cover - the space is mostly feasible


@dataclass(frozen=True)
class Load:
    """What each job of a measurement trains: `steps` batches of `batch` synthetic images an epoch, for
    `seconds` in all (over the genomes), with the augmentations or not."""

    batch: int
    steps: int
    seconds: float
    augment: bool = True


@dataclass(frozen=True)
class _JobSpec:
    index: int
    genomes_json: tuple[str, ...]
    device: str
    threads: int
    load: Load


def _job(spec: _JobSpec, barrier, queue) -> None:
    """One job of a measurement (a spawned process): put (index, images, seconds) or (index, error) on queue."""
    index, device, threads = spec.index, spec.device, spec.threads
    batch, steps, seconds, augment = spec.load.batch, spec.load.steps, spec.load.seconds, spec.load.augment
    try:
        torch.set_num_threads(threads)
        genomes = [Genome.from_json(j) for j in spec.genomes_json]
        data = make_synthetic(n_train=batch * steps, n_test=10, seed=index)
        # lr: small, so that no genome diverges; speed does not depend on it.
        cfg = TrainConfig(epochs=10_000, batch_size=batch, lr=0.01, augment=AugmentConfig() if augment else None,
                          device=device, seed=index, eval_every=-1, checkpoint=None)
        for g in genomes:  # warm-up: one epoch each
            train(g, TrainConfig(**{**cfg.__dict__, "epochs": max(1, -(-4 // steps))}), data)
        barrier.wait()
        images = spent = 0.0
        budget = seconds / len(genomes)
        for k in range(len(genomes)):
            g = genomes[(index + k) % len(genomes)]
            t0 = time.perf_counter()
            result = train(g, cfg, data, on_epoch=lambda stats: time.perf_counter() - t0 >= budget)
            images += sum(h.images_per_s * h.seconds for h in result.history)
            spent += result.train_seconds
        queue.put((index, images, spent))
    except BaseException as e:  # reported by the parent as one line
        queue.put((index, f"{type(e).__name__}: {e}"))


def job_devices(devices: list[str], jobs: int) -> list[str]:
    """The device of each of `jobs` jobs: round-robin over `devices`, as search.run places its workers."""
    return list(place(devices, jobs).devices)


def measure(genomes: list, jobs: int, device: str | list[str], load: Load) -> dict:
    """Run `jobs` concurrent jobs once, over `device` (or the devices listed, round-robin); {"jobs",
    "images_per_s" (aggregate), "per_job_images_per_s"}."""
    devices = job_devices([device] if isinstance(device, str) else list(device), jobs)
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; each job is a fresh process like a --jobs worker
    barrier, queue = ctx.Barrier(jobs), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(_JobSpec(i, tuple(g.to_json() for g in genomes), devices[i],
                                                     cpu_threads(jobs), load), barrier, queue), daemon=True)
             for i in range(jobs)]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            results.append(queue.get(timeout=600))
            if len(results[-1]) == 2:
                barrier.abort()
                raise SearchError(f"bench job {results[-1][0]} failed: {results[-1][1]}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    rates = [images / spent for _, images, spent in results]
    return {"jobs": jobs, "images_per_s": round(sum(rates), 1), "per_job_images_per_s": round(sum(rates) / jobs, 1)}


def settle(run_once: Callable[[], dict], max_runs: int) -> dict:
    """Measure (run_once: one `measure` call) until two runs agree within AGREE, at least twice, at most max_runs
    times: the agreeing pair's mean, with every run's aggregate images/s in "runs" and "agreed" (False: none
    agreed; the figure is then the mean of all runs)."""
    runs: list[dict] = []
    pair: tuple[dict, dict] | None = None
    while len(runs) < max(max_runs, 2) and pair is None:
        runs.append(run_once())
        close = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                 if abs(a["images_per_s"] - b["images_per_s"]) <= AGREE * max(a["images_per_s"], b["images_per_s"])]
        pair = min(close, key=lambda ab: abs(ab[0]["images_per_s"] - ab[1]["images_per_s"]), default=None)
    used = pair or tuple(runs)
    rate = sum(r["images_per_s"] for r in used) / len(used)
    jobs = runs[0]["jobs"]
    return {"jobs": jobs, "images_per_s": round(rate, 1), "per_job_images_per_s": round(rate / jobs, 1),
            "runs": [r["images_per_s"] for r in runs], "agreed": pair is not None}


def assess(rows: list[dict]) -> list[str]:
    """Set each row's "speedup" (over rows[0]), "plausible" (at most its share of jobs, with SPEEDUP_SLACK) and
    "reliable"; returns the warnings, one line each, for what is not."""
    base = rows[0]
    warnings = [f"jobs {r['jobs']}: its {len(r['runs'])} runs disagree ({', '.join(f'{x:,.0f}' for x in r['runs'])} "
                f"images/s, none two within {AGREE:.0%})" for r in rows if not r["agreed"]]
    for r in rows:
        r["speedup"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["plausible"] = r["speedup"] <= r["jobs"] / base["jobs"] * SPEEDUP_SLACK
        if not r["plausible"]:
            warnings.append(f"jobs {r['jobs']}: {r['speedup']:.2f}x the images/s of jobs {base['jobs']}, more than "
                            f"{r['jobs'] / base['jobs']:g} times as many jobs can train: one of the two was disturbed")
    plausible = all(r["plausible"] for r in rows)
    for r in rows:  # the first row is every speed-up's reference: if it is in doubt, so is every row
        r["reliable"] = bool(r["agreed"] and base["agreed"] and plausible)
    return warnings


@dataclass(frozen=True)
class Workload:
    """What a search command would train: `trials` trials of `trial_epochs` (a `pruned_fraction` of them
    stopped early) on a dataset of n_train + n_test images, then a final retrain of `final_epochs`."""

    dataset: str
    n_train: int
    n_test: int
    trials: int
    trial_epochs: int
    final_epochs: int
    pruned_fraction: float


def project(aggregate: float, single: float, work: Workload) -> dict:
    """Seconds of the search (at `aggregate` images/s) and of the final retrain (at `single` images/s)."""
    n_train, n_test, trial_epochs, pruned_fraction = work.n_train, work.n_test, work.trial_epochs, work.pruned_fraction
    trials, final_epochs = work.trials, work.final_epochs
    val = defaults_for(work.dataset).val_size
    n_val = round(val * n_train) if isinstance(val, float) else int(val)
    pruned_epochs = trial_epochs // 2 + 1  # search.study.make_pruner: no verdict before this many epochs
    mean_epochs = (1 - pruned_fraction) * trial_epochs + pruned_fraction * min(pruned_epochs, trial_epochs)
    search = trials * mean_epochs * ((n_train - n_val) + n_val / EVAL_SPEEDUP) / aggregate
    final = (final_epochs * n_train + n_test / EVAL_SPEEDUP) / single
    return {"search_seconds": round(search, 1), "final_seconds": round(final, 1),
            "total_seconds": round(search + final, 1), "mean_epochs_per_trial": round(mean_epochs, 2),
            "train_images": n_train - n_val, "val_images": n_val}


def _job_counts(text: str | None, device_type: str, gpus: int = 1) -> list[int]:
    if text:
        try:
            counts = sorted({int(t) for t in text.split(",")})
        except ValueError:
            counts = [0]
        if counts[0] < 1:
            raise SearchError(f"--jobs must be positive integers separated by commas, got {text!r}")
        return counts
    limit = available_cpus() if device_type != "cuda" else 8 * gpus  # a CPU job per core; GPUs: up to 8 each
    return [2 ** i for i in range(12) if 2 ** i <= limit]


def build_parser():
    p = make_parser("python -m search.bench", __doc__)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda (every GPU), cuda:1, "
                   "cuda:0,cuda:2, ...")
    p.add_argument("--dataset", default="cifar10", help="whose batch size, epochs and sizes to project (cifar10, digits, or the path of your own images)")
    p.add_argument("--jobs", default=None, help="job counts to measure, e.g. 1,2,4 (default: powers of 2 up to the "
                   "CPU cores on CPU, up to 8 a GPU on CUDA)")
    p.add_argument("--genomes", type=int, default=None, help="sampled genomes each job trains (CPU 2, CUDA 4)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per run (CPU 2, CUDA 10: two "
                   "runs that agree make a figure)")
    p.add_argument("--repeats", type=int, default=3, help="runs per job count at most; it is measured until two agree "
                   f"within {AGREE * 100:.0f} %% (at least 2; default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="measured batch (CUDA: the dataset's, CPU: 32)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (CPU 1, CUDA 20: one host sync per epoch)")
    p.add_argument("--trials", type=int, default=100, help="trained trials to project (default 100)")
    p.add_argument("--pruned-fraction", type=float, default=PRUNED_FRACTION,
                   help=f"assumed share of trials the pruner stops (default {PRUNED_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="which genomes are sampled")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    devices = [str(d) for d in check_devices(args.device)]  # a bare cuda: every visible GPU
    dev = torch.device(devices[0])
    cuda = dev.type == "cuda"
    counts = _job_counts(args.jobs, dev.type, len(devices))
    d = defaults_for(args.dataset)
    genomes = sample_typical(args.genomes or (4 if cuda else 2), seed=args.seed)
    seconds, steps = args.seconds or (10.0 if cuda else 2.0), args.steps or (20 if cuda else 1)
    batch = args.batch_size or (d.batch_size if cuda else 32)
    if args.dataset in DATASET_SIZES:
        n_train, n_test = DATASET_SIZES[args.dataset]
    else:
        data = load_dataset(args.dataset, None)
        n_train, n_test = len(data.y_train), len(data.y_test)
    def run_once(jobs: int) -> dict:
        return measure(genomes, jobs, devices, Load(batch, steps, seconds, d.augment))

    rows = [settle(lambda: run_once(jobs), args.repeats) for jobs in counts]
    warnings = assess(rows)
    if not all(r["plausible"] for r in rows):
        # The first count is the reference of every speed-up: measure it again, once, after the others.
        again = settle(lambda: run_once(counts[0]), args.repeats)
        rows[0] = {**again, "runs": rows[0]["runs"] + again["runs"]}
        warnings = assess(rows)
    single = rows[0]["images_per_s"] if counts[0] == 1 else rows[0]["per_job_images_per_s"]
    for row in rows:
        row.update(project(row["images_per_s"], single, Workload(args.dataset, n_train, n_test, args.trials,
                                                                  d.trial_epochs, d.final_epochs, args.pruned_fraction)))
    reliable = [r for r in rows if r["reliable"]]
    best = min(reliable, key=lambda r: r["total_seconds"]) if reliable else None
    result = {
        "device": str(dev), "devices": devices, "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor() or
        platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "dataset": args.dataset,
        "batch_size": d.batch_size, "lr": d.lr, "measured_batch_size": batch, "trials": args.trials,
        "trial_epochs": d.trial_epochs, "final_epochs": d.final_epochs, "train_images_total": n_train,
        "test_images": n_test, "seconds_per_measurement": seconds, "steps_per_epoch": steps,
        "assumptions": {"pruned_fraction": args.pruned_fraction, "pruned_trial_epochs": d.trial_epochs // 2 + 1,
                        "eval_speedup": EVAL_SPEEDUP, "final_rate": "one job alone",
                        "not_counted": "rejected candidates, model building, start-up, data loading"},
        "genomes": [{"summary": g.summary(), "params": analyze(g).params, "macs": analyze(g).macs} for g in genomes],
        "repeats": args.repeats, "rows": rows, "reliable": len(reliable) == len(rows), "warnings": warnings,
        "best_jobs": best["jobs"] if best else None, "auto_jobs": auto_jobs(devices), "available_cpus": available_cpus(),
    }
    _print_table(result, args, d)
    if args.json:
        print(json.dumps(result))
    return 0


def _check(args) -> None:
    """SearchError (one line) for a flag out of range."""
    if args.dataset == "synthetic":
        raise SearchError("--dataset must be cifar10, digits or the path of your own images, got 'synthetic'")
    args.dataset = canonical_dataset(args.dataset)  # DataError (one line) for a path that is not there
    if not 0 <= args.pruned_fraction <= 1:
        raise SearchError(f"--pruned-fraction must lie in [0, 1], got {args.pruned_fraction}")
    if args.repeats < 2:
        raise SearchError(f"--repeats must be at least 2 (two runs that agree make a figure), got {args.repeats}")
    for flag in ("genomes", "seconds", "steps", "trials", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise SearchError(f"--{flag.replace('_', '-')} must be positive, got {value}")


def _print_table(result: dict, args, d) -> None:
    """The measurements, the projection (one row per job count) and the warnings."""
    rows, warnings = result["rows"], result["warnings"]
    reliable = [r for r in rows if r["reliable"]]
    best = next((r for r in rows if r["jobs"] == result["best_jobs"]), None) if reliable else None
    print(f"{args.dataset} on {', '.join(result['devices'])} ({result['device_name']}), measured at batch "
          f"{result['measured_batch_size']}; {len(result['genomes'])} sampled genomes, "
          f"{result['seconds_per_measurement']:g} s per run, until two runs of a job count agree "
          f"(at most {args.repeats})")
    print(f"projection: --trials {args.trials} x {d.trial_epochs} epochs ({args.pruned_fraction:.0%} pruned after "
          f"{d.trial_epochs // 2 + 1}) on {rows[0]['train_images']:,} + {rows[0]['val_images']:,} validation "
          f"images, then {d.final_epochs} epochs on {result['train_images_total']:,}")
    print(f"{'jobs':>4}  {'images/s':>10}  {'per job':>9}  {'speedup':>7}  {'search':>9}  {'final':>9}  {'total':>9}")
    for r in rows:
        print(f"{r['jobs']:>4}  {r['images_per_s']:>10,.0f}  {r['per_job_images_per_s']:>9,.0f}  {r['speedup']:>6.2f}x  "
              f"{_hms(r['search_seconds']):>9}  {_hms(r['final_seconds']):>9}  {_hms(r['total_seconds']):>9}"
              + ("" if r["reliable"] else "  unreliable"))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if warnings:
        print("warning: the rows marked unreliable measured other work on this machine as much as this one; rerun "
              "when it is idle, or with more --seconds / --repeats", file=sys.stderr)
    if best is None:
        print("fastest: unknown, no reliable figure (see the warnings)")
    else:
        print(f"fastest: --jobs {best['jobs']}, about {_hms(best['total_seconds'])} for search + final retrain"
              + ("" if len(reliable) == len(rows) else " (of the reliable rows only)"))

def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


if __name__ == "__main__":
    from space.cli import run_cli
    run_cli(main, errors=ERRORS)
