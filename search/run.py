"""`python -m search.run --trials N [--dataset cifar10|digits|synthetic]`: search, retrain the winner, report.

Creates or resumes an Optuna study (default sqlite:///results/<study>.db), warm-started with the seed
presets. Candidates that break the rules (--max-params, --min-rf, a DSC and a dilated conv) are recorded
and never trained; N counts trained candidates. Each one trains --trial-epochs on a train/validation
split of the training images, and the pruner stops weak ones. Then the best (by validation accuracy) is
retrained on all training images for --final-epochs and tested once; outputs go to --out.

Run the same command again after a crash or Ctrl-C: it resumes. Offline quickstart, a few CPU minutes:
    python -m search.run --dataset digits --trials 12
Several workers on one study (each process, any node that reaches the storage):
    python -m search.run --storage journal:results/shared.log --study-name big --trials 200 --no-final
    python -m search.retrain --storage journal:results/shared.log --study-name big
Inspect it: optuna-dashboard sqlite:///results/cifar10-nas.db
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import optuna

from .cli import ERRORS, add_study_args, make_parser, positive_int
from .constraints import check_satisfiable
from .settings import DEFAULTS, SearchError, SearchSettings, parse_val_size
from .storage import dashboard_command, open_storage, redact, resolve_url

__all__ = ["main", "machine_info"]


def machine_info(device: str) -> dict:
    import torch
    from train.engine import resolve_device

    dev = resolve_device(device)
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "cpu": f"{cpu} x {os.cpu_count()}", "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _sigterm(signum, frame):  # a scheduler's SIGTERM: stop like Ctrl-C, leaving a resumable study
    raise KeyboardInterrupt


def build_parser():
    p = make_parser("python -m search.run", __doc__)
    p.add_argument("--trials", type=int, default=100, help="trained candidates the study should hold (default 100)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (default), digits (offline) or synthetic (tests)")
    p.add_argument("--data-dir", default="data", help="holds cifar-10-batches-py/ (downloaded there if absent)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    add_study_args(p, study_default=None)
    p.add_argument("--out", default=None, help="output folder (default: results/<study>/)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0, help="validation split, sampler and training seed")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: train.defaults, per dataset)")
    p.add_argument("--max-params", type=int, default=200_000, help="parameter budget (default 200,000)")
    p.add_argument("--min-rf", type=int, default=44, help="smallest receptive field, pixels (default 44)")
    p.add_argument("--trial-epochs", type=int, default=None, help="epochs per candidate (cifar10 8, digits 4)")
    p.add_argument("--final-epochs", type=int, default=None, help="epochs of the final retrain (cifar10 60, digits 15)")
    p.add_argument("--no-final", action="store_true", help="search only; retrain later with search.retrain")
    p.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    p.add_argument("--val-size", default=None, help="validation images (5000) or fraction (0.2) of the training set")
    p.add_argument("--subset-train", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--subset-test", type=int, default=None, help="use only this many test images (quick runs)")
    p.add_argument("--progress", action="store_true", help="progress bar and per-epoch lines in the final retrain")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .study import PRUNERS, make_pruner  # after argument errors: importing optuna's samplers takes a moment

    if args.dataset not in DEFAULTS:
        raise SearchError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DEFAULTS)}")
    if args.pruner not in PRUNERS:
        raise SearchError(f"unknown pruner {args.pruner!r}; choose one of: {', '.join(PRUNERS)}")
    d = DEFAULTS[args.dataset]
    for flag in ("trials", "trial_epochs", "final_epochs", "batch_size", "max_params", "min_rf", "subset_train",
                 "subset_test"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    batch = args.batch_size or d.batch_size
    settings = SearchSettings(
        dataset=args.dataset, max_params=args.max_params, min_rf=args.min_rf,
        trial_epochs=args.trial_epochs or d.trial_epochs,
        val_size=parse_val_size(args.val_size) if args.val_size else d.val_size, seed=args.seed,
        subset_train=args.subset_train, batch_size=batch, lr=d.lr_for(batch), augment=d.augment)
    final_epochs = args.final_epochs or d.final_epochs
    check_satisfiable(settings.max_params, settings.min_rf)  # before any data or training
    name = args.study_name or f"{args.dataset}-nas"
    url = resolve_url(args.storage, name)

    from .data import check_steps, load_full, search_split
    from .final import FINAL_FILES, retrain_best
    from .liveness import requeue
    from .report import RUN_PREFIX, write_report
    from .runner import Search, SearchStopped, make_train_fn
    from .study import enqueue_presets, open_study

    storage = open_storage(url, stale_callback=requeue)
    label = redact(url)  # what is printed and stored: never a password
    full = load_full(args.dataset, args.data_dir, args.subset_train, args.subset_test, args.seed,
                     download=not args.no_download)
    split = search_split(full, settings)
    if not args.no_final:
        check_steps(len(full.y_train), settings.batch_size, final_epochs, "the final retrain")
    study, created = open_study(storage, name, settings, make_pruner(args.pruner, settings.trial_epochs), label)
    out = Path(args.out) if args.out else Path("results") / name
    presets = enqueue_presets(study, full.num_classes)
    info = machine_info(args.device)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    run_key = f"{RUN_PREFIX}{started}:{info['host']}:{info['pid']}"
    command = shlex.join([os.path.basename(sys.executable), "-m", "search.run", *(sys.argv[1:] if argv is None else argv)])
    study.set_user_attr(run_key, {**info, "started": started, "command": command})
    print(f"study {name} ({'new' if created else 'resumed'}) in {label}; outputs in {out}/")
    print(f"data: {full.name}, {len(split.y_train):,} training / {len(split.y_test):,} validation images; "
          f"{settings.trial_epochs} epochs per trial on {info['device']}"
          + (f" ({info['device_name']})" if info["device_name"] != "cpu" else "") + f"; pruner {args.pruner}"
          + (f"; enqueued presets {', '.join(presets)}" if presets else ""))
    print(f"watch it: {dashboard_command(label)}", flush=True)

    signal.signal(signal.SIGTERM, _sigterm)
    search = Search(study, settings, full.num_classes, make_train_fn(split, settings, args.device), args.trials,
                    log=lambda line: print(line, flush=True))
    t0 = time.time()
    try:
        counts = search.run()
    except KeyboardInterrupt:
        c = search.counts()
        where = f"trial {search.interrupted} marked failed and queued again; " if search.interrupted is not None else ""
        print(f"interrupted: {where}{c.line()} of {args.trials} wanted; run the same command to resume",
              file=sys.stderr)
        return 130
    except SearchStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    search_seconds = time.time() - t0
    study.set_user_attr(run_key, {**study.user_attrs[run_key], "seconds": round(search_seconds, 1)})
    print(f"search: {counts.line()}; {counts.epochs} epochs trained of {counts.trained * settings.trial_epochs} "
          f"without pruning; {search_seconds:.0f} s")

    final, final_seconds = None, 0.0
    if not args.no_final:
        t1 = time.time()
        try:
            final = retrain_best(study, settings, full, out, final_epochs, args.device, args.progress)
        except KeyboardInterrupt:
            print(f"interrupted during the final retrain; its checkpoint is in {out}/; run the same command to "
                  "resume", file=sys.stderr)
            return 130
        final_seconds = time.time() - t1
    paths = write_report(study, out, label)
    from .trials import best_trial

    best = best_trial(study.get_trials(deepcopy=False))
    print(f"best trial {best.number if best else None}: validation accuracy "
          f"{best.value if best else float('nan'):.4f}"
          + (f"; test accuracy {final['test_acc']:.4f} after {final_epochs} epochs ({final_seconds:.0f} s)"
             if final else ""))
    if final:
        for key in FINAL_FILES:
            paths[key] = out / key
    for key, path in paths.items():
        print(f"{key}: {path}")
    if args.json:
        print(json.dumps({"study": name, "storage": label, "dataset": args.dataset, "trials": args.trials,
                          **counts.as_dict(), "epochs_without_pruning": counts.trained * settings.trial_epochs,
                          "best_trial": best.number if best else None, "best_val_acc": best.value if best else None,
                          "test_acc": final["test_acc"] if final else None, "search_seconds": round(search_seconds, 1),
                          "final_seconds": round(final_seconds, 1), "out": str(out),
                          "paths": {k: str(v) for k, v in paths.items()}}))
    return 0


if __name__ == "__main__":
    from space.spec import run_cli
    run_cli(main, errors=ERRORS)
