"""A/B of `search.run --prescreen K` (issue 13): the same short searches with and without the prescreen.

    python results/benchmarks/prescreen_ab/prescreen_ab.py --data-dir /tmp/cifar10 --k 4 --seeds 0,1,2 --trials 30 \\
        --subset-train 10000 --trial-epochs 2 --out results/benchmarks/prescreen_ab/prescreen_ab_cpu.json

For every seed and every K in {1, --k}: one `python -m search.run` study (--no-final, --pruner none, so every
trained trial has the full --trial-epochs and the studies differ only in which candidates were trained), named
ab-k{K}-s{seed} in its own SQLite file under --storage-dir, started without the seed presets (--no-presets: they
would be the same trials in both arms). Both arms of one seed share the seed: the same validation split and
sampler seed. `--arm K` runs one arm only (two processes, one per arm, then a last run without --arm for the
table). Then, per study: the best validation accuracy (search.trials.
best_trial), the mean of its top 5, the trials trained / screened out / rejected and the search's seconds (which
include the proxies' cost); per K: mean ± std over the seeds, and per seed the paired difference.

Resumable: a study that already holds --trials trained trials is not run again; a killed one is resumed by
search.run itself. `--extra "..."` passes more flags to search.run (e.g. "--max-params 150000"). The table and
everything behind it (commands, machine, date) go to --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna

from search.report import RUN_PREFIX
from search.run import machine_info
from search.storage import open_storage
from search.lifecycle import classify as kind, count
from search.trials import best_trial, val_acc

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_name(k: int, seed: int) -> str:
    return f"ab-k{k}-s{seed}"


def load(storage_dir: Path, name: str) -> optuna.Study | None:
    path = storage_dir / f"{name}.db"
    if not path.exists():
        return None
    try:
        return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{path}", create=False))
    except KeyError:  # the file exists, the study was never created in it
        return None


def summary(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    c = count(trials)
    best = best_trial(trials)
    done = sorted((val_acc(t) for t in trials if kind(t) == "completed" and val_acc(t) is not None), reverse=True)
    runs = [v for key, v in study.user_attrs.items() if key.startswith(RUN_PREFIX)]
    return {"best_val_acc": val_acc(best) if best else None, "best_trial": best.number if best else None,
            "top5_mean": statistics.mean(done[:5]) if done else None, "trained": c.trained,
            "screened": c.screened, "rejected": c.rejected, "failed": c.failed,
            "search_seconds": round(sum(r.get("seconds", 0.0) for r in runs), 1),
            "commands": [r.get("command") for r in runs]}


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10", help="cifar10, or synthetic for a smoke test")
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--k", type=int, default=4, help="the prescreened arm's K (the other arm: 1, off)")
    p.add_argument("--proxy", default=None, help="the prescreen's --proxy (default: search.run's, the vote)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=30, help="trained trials per study")
    p.add_argument("--subset-train", type=int, default=10000, help="training images (the validation split is "
                                                                    "held out of these)")
    p.add_argument("--val-size", default="5000", help="validation images held out of --subset-train (5000: what the "
                   "recorded runs used; search.run's default for a subset is now 10 %% of it)")
    p.add_argument("--trial-epochs", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--extra", default="", help="more search.run flags, one string")
    p.add_argument("--arm", type=int, help="run only this K's studies, no table (two processes, one per arm, can "
                   "share the cores; a last run without --arm prints the table)")
    p.add_argument("--storage-dir", default="results/prescreen_ab", help="the studies (not tracked by git)")
    p.add_argument("--out", default="results/benchmarks/prescreen_ab/prescreen_ab_cpu.json")
    args = p.parse_args()
    if args.k < 2:
        p.error("--k must be at least 2 (the other arm is K = 1)")
    storage_dir = Path(args.storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [1, args.k]
    if args.arm is not None and args.arm not in arms:
        p.error(f"--arm must be 1 or --k ({args.k})")
    results: dict[str, dict] = {}
    for seed in seeds:  # seed-major: a run cut short still has both arms of its first seeds
        for k in arms if args.arm is None else [args.arm]:
            name = study_name(k, seed)
            study = load(storage_dir, name)
            if study is None or count(study.get_trials(deepcopy=False)).trained < args.trials:
                cmd = [sys.executable, "-m", "search.run", "--dataset", args.dataset, "--data-dir", args.data_dir,
                       # --no-presets: the seed presets would be the same trials in both arms and are no
                       # sampled candidate; the arms differ only in what the sampler's proposals become
                       "--no-download", "--no-final", "--no-presets", "--subset-train", str(args.subset_train), "--val-size", args.val_size, "--trial-epochs",
                       str(args.trial_epochs), "--pruner", "none", "--trials", str(args.trials), "--seed", str(seed),
                       "--prescreen", str(k), *(["--proxy", args.proxy] if args.proxy and k > 1 else []),
                       "--study-name", name, "--storage", str(storage_dir / f"{name}.db"), "--device", args.device,
                       "--out", str(storage_dir / name), *shlex.split(args.extra)]
                print(f"$ {shlex.join(cmd)}", flush=True)
                r = subprocess.run(cmd)
                if r.returncode != 0:
                    sys.exit(f"error: {name} ended with exit status {r.returncode}; fix the cause and rerun (it resumes)")
                study = load(storage_dir, name)
            results[name] = {"k": k, "seed": seed, **summary(study)}
            print(f"{name}: best val {results[name]['best_val_acc']}, {results[name]['trained']} trained, "
                  f"{results[name]['screened']} screened out, {results[name]['search_seconds']:.0f} s", flush=True)

    if args.arm is not None:
        return
    info = machine_info(args.device)
    lines = [f"{args.dataset}, {args.subset_train} training images, {args.trial_epochs} epochs per trial, "
             f"{args.trials} trained trials per study, seeds {args.seeds}, proxy {args.proxy or 'vote'}"
             + (f", extra: {args.extra}" if args.extra else "") + f"; {info['device_name']} / {info['cpu']}, "
             f"torch {info['torch']}, optuna {info['optuna']}; {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "| --prescreen | best val acc (mean ± std over seeds) | top-5 mean | screened out | search s |",
             "|---:|---:|---:|---:|---:|"]
    for k in arms:
        rs = [r for r in results.values() if r["k"] == k]
        lines.append(f"| {k} | {mean_std([r['best_val_acc'] for r in rs])} | "
                     f"{mean_std([r['top5_mean'] for r in rs if r['top5_mean'] is not None])} | "
                     f"{statistics.mean(r['screened'] for r in rs):.0f} | "
                     f"{statistics.mean(r['search_seconds'] for r in rs):.0f} |")
    diffs = [results[study_name(args.k, s)]["best_val_acc"] - results[study_name(1, s)]["best_val_acc"]
             for s in seeds]
    lines += ["", f"paired difference of the best val acc (K={args.k} minus K=1), per seed: "
              + ", ".join(f"{s}: {d:+.4f}" for s, d in zip(seeds, diffs)) + f"; mean {statistics.mean(diffs):+.4f}"]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": shlex.join([Path(sys.executable).name, *sys.argv]),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info, "args": vars(args),
                               "studies": results, "paired_differences": dict(zip(map(str, seeds), diffs)),
                               "table": "\n".join(lines)}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
