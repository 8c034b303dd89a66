"""`python -m search.bench [--device cuda] [--json]`: how fast would `search.run --trials 100` be here?

Measures, on the given device, the aggregate training throughput (images/s, all jobs together) of typical
genomes for 1, 2, 4, ... concurrent jobs (processes, as `search.run --jobs N` runs them), then projects
the wall time of the whole search plus the final retrain from it.

Measurement: --genomes feasible genomes drawn from the search space (space.sample, the default rules:
200,000 parameters, RF 44), trained by train.engine.train (the real pipeline: uint8 data on the device,
batched augmentation, channels_last, bf16 on CUDA) on synthetic 32x32 images at the dataset's batch size
(on CPU at batch 32 by default, so that a measurement fits in seconds: CPU images/s hardly depend on the
batch, see results/benchmarks/cpu_seed003_net.md).
Each job first trains every genome for one short epoch (warm-up: allocator, kernel selection), waits for
the others at a barrier, then trains every genome (rotated, so jobs do not all train the same one at once)
for --seconds / --genomes seconds each. A job's rate = its images / its training seconds; the aggregate is
the sum over the jobs, which ran over the same window.

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
import os
import platform
import time

from .cli import ERRORS, make_parser
from .settings import DEFAULTS, SearchError

__all__ = ["EVAL_SPEEDUP", "PRUNED_FRACTION", "DATASET_SIZES", "sample_typical", "measure", "project", "main"]

EVAL_SPEEDUP = 3.0  # evaluation images per training image-time: forward only (no backward, no step, no augment)
PRUNED_FRACTION = 0.5  # assumed share of trained trials the median pruner stops (it prunes below-median curves)
DATASET_SIZES = {"cifar10": (50_000, 10_000)}  # training / test images of the official set, known without loading


def sample_typical(n: int, seed: int = 0, max_params: int = 200_000, min_rf: int = 44) -> list:
    """The first n feasible genomes the search space's uniform sampler draws."""
    from space import check
    from space.sample import sample_genomes

    out = []
    for g in sample_genomes(100 * n + 100, seed=seed):
        if not check(g, max_params, min_rf):
            out.append(g)
            if len(out) == n:
                return out
    raise SearchError(f"found fewer than {n} feasible genomes")  # pragma: no cover - the space is mostly feasible


def _job(index: int, genomes_json: list[str], device: str, batch: int, steps: int, seconds: float, threads: int,
         augment: bool, barrier, queue) -> None:
    """One job of a measurement (a spawned process): put (index, images, seconds) or (index, error) on queue."""
    try:
        import torch

        torch.set_num_threads(threads)
        from space import Genome
        from train.augment import AugmentConfig
        from train.data import make_synthetic
        from train.engine import TrainConfig, train

        genomes = [Genome.from_json(j) for j in genomes_json]
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


def measure(genomes: list, jobs: int, device: str, batch: int, steps: int, seconds: float, augment: bool = True
            ) -> dict:
    """Run `jobs` concurrent jobs once; {"jobs", "images_per_s" (aggregate), "per_job_images_per_s"}."""
    import multiprocessing as mp

    from .workers import cpu_threads

    ctx = mp.get_context("spawn")  # CUDA cannot be forked; each job is a fresh process like a --jobs worker
    barrier, queue = ctx.Barrier(jobs), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(i, [g.to_json() for g in genomes], device, batch, steps, seconds,
                                            cpu_threads(jobs), augment, barrier, queue), daemon=True)
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


def project(aggregate: float, single: float, dataset: str, n_train: int, n_test: int, trials: int,
            trial_epochs: int, final_epochs: int, pruned_fraction: float) -> dict:
    """Seconds of the search (at `aggregate` images/s) and of the final retrain (at `single` images/s)."""
    val = DEFAULTS[dataset].val_size
    n_val = round(val * n_train) if isinstance(val, float) else int(val)
    pruned_epochs = trial_epochs // 2 + 1  # search.study.make_pruner: no verdict before this many epochs
    mean_epochs = (1 - pruned_fraction) * trial_epochs + pruned_fraction * min(pruned_epochs, trial_epochs)
    search = trials * mean_epochs * ((n_train - n_val) + n_val / EVAL_SPEEDUP) / aggregate
    final = (final_epochs * n_train + n_test / EVAL_SPEEDUP) / single
    return {"search_seconds": round(search, 1), "final_seconds": round(final, 1),
            "total_seconds": round(search + final, 1), "mean_epochs_per_trial": round(mean_epochs, 2),
            "train_images": n_train - n_val, "val_images": n_val}


def _job_counts(text: str | None, device_type: str) -> list[int]:
    if text:
        try:
            counts = sorted({int(t) for t in text.split(",")})
        except ValueError:
            counts = [0]
        if counts[0] < 1:
            raise SearchError(f"--jobs must be positive integers separated by commas, got {text!r}")
        return counts
    from train.device import available_cpus
    limit = available_cpus() if device_type != "cuda" else 8  # a CPU job per core; GPUs: up to 8
    return [2 ** i for i in range(8) if 2 ** i <= limit]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.bench", __doc__)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--dataset", default="cifar10", help="whose batch size, epochs and sizes to project (cifar10, digits)")
    p.add_argument("--jobs", default=None, help="job counts to measure, e.g. 1,2,4 (default: powers of 2 up to the "
                   "CPU cores on CPU, up to 8 on CUDA)")
    p.add_argument("--genomes", type=int, default=None, help="sampled genomes each job trains (CPU 2, CUDA 4)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per job count (CPU 4, CUDA 20)")
    p.add_argument("--batch-size", type=int, default=None, help="measured batch (CUDA: the dataset's, CPU: 32)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (CPU 1, CUDA 20: one host sync per epoch)")
    p.add_argument("--trials", type=int, default=100, help="trained trials to project (default 100)")
    p.add_argument("--pruned-fraction", type=float, default=PRUNED_FRACTION,
                   help=f"assumed share of trials the pruner stops (default {PRUNED_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="which genomes are sampled")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.dataset not in DEFAULTS or args.dataset == "synthetic":
        raise SearchError(f"--dataset must be cifar10 or digits, got {args.dataset!r}")
    if not 0 <= args.pruned_fraction <= 1:
        raise SearchError(f"--pruned-fraction must lie in [0, 1], got {args.pruned_fraction}")
    for flag in ("genomes", "seconds", "steps", "trials", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise SearchError(f"--{flag.replace('_', '-')} must be positive, got {value}")

    import torch
    from train.device import check_device

    dev = check_device(args.device)
    cuda = dev.type == "cuda"
    counts = _job_counts(args.jobs, dev.type)
    d = DEFAULTS[args.dataset]
    genomes = sample_typical(args.genomes or (4 if cuda else 2), seed=args.seed)
    seconds, steps = args.seconds or (20.0 if cuda else 4.0), args.steps or (20 if cuda else 1)
    batch = args.batch_size or (d.batch_size if cuda else 32)
    if args.dataset in DATASET_SIZES:
        n_train, n_test = DATASET_SIZES[args.dataset]
    else:
        from train.data import load_dataset
        data = load_dataset(args.dataset, None)
        n_train, n_test = len(data.y_train), len(data.y_test)
    rows = []
    for jobs in counts:
        rows.append(measure(genomes, jobs, str(dev), batch, steps, seconds, d.augment))
    single = rows[0]["images_per_s"] if counts[0] == 1 else rows[0]["per_job_images_per_s"]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
        row.update(project(row["images_per_s"], single, args.dataset, n_train, n_test, args.trials,
                           d.trial_epochs, d.final_epochs, args.pruned_fraction))
    best = min(rows, key=lambda r: r["total_seconds"])
    from space import analyze
    from train.device import available_cpus

    from .workers import auto_jobs

    result = {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor() or
        platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "dataset": args.dataset,
        "batch_size": d.batch_size, "lr": d.lr, "measured_batch_size": batch, "trials": args.trials,
        "trial_epochs": d.trial_epochs, "final_epochs": d.final_epochs, "train_images_total": n_train,
        "test_images": n_test, "seconds_per_measurement": seconds, "steps_per_epoch": steps,
        "assumptions": {"pruned_fraction": args.pruned_fraction, "pruned_trial_epochs": d.trial_epochs // 2 + 1,
                        "eval_speedup": EVAL_SPEEDUP, "final_rate": "one job alone",
                        "not_counted": "rejected candidates, model building, start-up, data loading"},
        "genomes": [{"summary": g.summary(), "params": analyze(g).params, "macs": analyze(g).macs} for g in genomes],
        "rows": rows, "best_jobs": best["jobs"], "auto_jobs": auto_jobs(str(dev)), "available_cpus": available_cpus(),
    }
    print(f"{args.dataset} on {result['device']} ({result['device_name']}), measured at batch {batch}; "
          f"{len(genomes)} sampled genomes, {seconds:g} s per job count")
    print(f"projection: --trials {args.trials} x {d.trial_epochs} epochs ({args.pruned_fraction:.0%} pruned after "
          f"{d.trial_epochs // 2 + 1}) on {rows[0]['train_images']:,} + {rows[0]['val_images']:,} validation "
          f"images, then {d.final_epochs} epochs on {n_train:,}")
    print(f"{'jobs':>4}  {'images/s':>10}  {'per job':>9}  {'speedup':>7}  {'search':>9}  {'final':>9}  {'total':>9}")
    for r in rows:
        print(f"{r['jobs']:>4}  {r['images_per_s']:>10,.0f}  {r['per_job_images_per_s']:>9,.0f}  {r['speedup']:>6.2f}x  "
              f"{_hms(r['search_seconds']):>9}  {_hms(r['final_seconds']):>9}  {_hms(r['total_seconds']):>9}")
    print(f"fastest: --jobs {best['jobs']}, about {_hms(best['total_seconds'])} for search + final retrain")
    if args.json:
        print(json.dumps(result))
    return 0


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


if __name__ == "__main__":
    from space.spec import run_cli
    run_cli(main, errors=ERRORS)
