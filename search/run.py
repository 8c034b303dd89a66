"""`python -m search.run --trials N [--dataset cifar10|digits|synthetic]`: search, retrain the winner, report.

Creates or resumes an Optuna study (default sqlite:///results/<study>.db), warm-started with the seed
presets. Candidates that break the rules (--max-params, --min-rf, --max-macs, a DSC and a dilated conv) are
recorded and never trained; N counts trained candidates. Each one trains --trial-epochs on a train/validation
split of the training images, and the pruner stops weak ones. Then the best (by validation accuracy) is
retrained on all training images for --final-epochs and tested once; outputs go to --out.
--objectives accuracy,params (or accuracy,macs) makes it a multi-objective search (no pruning); its
winner is the most accurate member of the Pareto front. --prescreen K trains only the best of every K feasible
proposals by a zero-cost proxy (--proxy; see search.prescreen); the others are recorded as screened out.

Run the same command again after a crash or Ctrl-C: it resumes. Offline quickstart, minutes on 2 CPU
cores (the MACs cap keeps every net under 3 M MACs; docs/search.md says why these numbers):
    python -m search.run --dataset digits --trials 8 --max-macs 3000000 --trial-epochs 3 --final-epochs 8
Several trials at once on one node (--jobs N worker processes, spread over its GPUs, or those --device
lists; the study then lives in the journal file results/<study>.journal, which every command finds by itself):
    python -m search.run --trials 100 --jobs 4
Several workers on one study (each process, any node that reaches the storage):
    python -m search.run --storage journal:results/shared.log --study-name big --trials 200 --no-final
    python -m search.retrain --storage journal:results/shared.log --study-name big
Inspect it: optuna-dashboard sqlite:///results/cifar10-nas.db
"""
from __future__ import annotations

import argparse
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

from space import check_satisfiable
from space.rules import add_rule_flags
from space.cli import plural
from train.device import check_devices
from train.files import DATA_DIR, RESULTS, removed_on_error

from .cli import ERRORS, add_final_args, add_study_args, make_parser, parse_compare, positive_int
from .lifecycle import Counts, count, requeue, stopped_by_interrupt
from .loop import SearchStopped
from .settings import (DEFAULTS, SearchError, SearchSettings, cost_name, default_val_size, parse_objectives,
                       defaults_text, latency_settings, parse_val_size, resolve, resolve_settings)
from .storage import (STORAGE_ERRORS, dashboard_command, default_journal, default_storage, is_sqlite, local_file,
                      lost_storage, migrate_to_journal, open_storage, redact, resolve_url)
from .study import PRUNERS, SAMPLERS
from .workers import STOP, quiet_lost_interrupts, request_stop

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


def _stop_once(signum, frame):  # a worker: one SIGTERM/SIGINT stops it; more must not cut its cleanup short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request_stop(signum, frame)


def build_parser():
    p = make_parser("python -m search.run", __doc__)
    p.add_argument("--trials", type=int, default=100, help="trained candidates the study should hold (default 100)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (default), digits (offline) or synthetic (tests)")
    p.add_argument("--data-dir", default=DATA_DIR, help="holds cifar-10-batches-py/ (downloaded there if absent)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    add_study_args(p, reading=False)
    p.add_argument("--out", default=None, help="output folder (default: results/<study>/)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...; with --jobs: "
                   "cuda (or auto) spreads the workers over every visible GPU, cuda:0,cuda:2 over those")
    p.add_argument("--seed", type=int, default=0, help="validation split, sampler and training seed")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: train.defaults, per dataset)")
    add_rule_flags(p)
    p.add_argument("--objectives", default="accuracy",
                   help="accuracy (default), accuracy,params, accuracy,macs or accuracy,latency: maximise accuracy "
                        "and minimise the cost (multi-objective, not pruned)")
    p.add_argument("--prescreen", type=int, default=1, metavar="K",
                   help="train only the best of K feasible proposals by a zero-cost proxy, recording the others as "
                        "screened out (default 1: off)")
    p.add_argument("--proxy", default=None,
                   help="the prescreen's proxy: grad_norm (default: it ranked trained nets best), synflow, jacov, "
                        "naswot, params, or vote (the rank vote of synflow, naswot and grad_norm)")
    p.add_argument("--trial-epochs", type=int, default=None,
                   help=f"epochs per candidate (default per dataset: {defaults_text('trial_epochs')})")
    p.add_argument("--final-epochs", type=int, default=None,
                   help=f"epochs of the final retrain (default per dataset: {defaults_text('final_epochs')})")
    p.add_argument("--no-final", action="store_true", help="search only; retrain later with search.retrain")
    add_final_args(p)
    p.add_argument("--no-presets", action="store_true", help="do not start a new study with the seed presets "
                   "(e.g. to compare samplers on sampled candidates only)")
    p.add_argument("--sampler", default=None,
                   help="tpe (default), random (the control a search must beat), gp, nsga2 or qmc; stored with the "
                        "study, which resumes with its own")
    p.add_argument("--pruner", default=None, help="median (default), hyperband or none (the only choice, and the "
                                                   "default, with two objectives)")
    p.add_argument("--val-size", default=None, help="validation images (5000) or fraction (0.2) of the training set")
    p.add_argument("--subset-train", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--subset-test", type=int, default=None, help="use only this many test images (quick runs)")
    p.add_argument("--jobs", default="1", help="worker processes training trials at once on this node, round-robin "
                   "over the devices, or auto (1 on CPU; on CUDA from each GPU's free memory, see search.workers); "
                   "N > 1 keeps the study in results/<study>.journal (default 1)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by --jobs for its workers
    p.add_argument("--quiet", action="store_true", help="no line per epoch (trials and final retrain) and no "
                   "progress bar; a line per trial stays")
    p.add_argument("--progress", action="store_true", help="draw the progress bar (trials and final retrain) even "
                   "when stderr is not a terminal (by default only a terminal gets one)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any storage, data or output is touched; canonical from here on (the parent trains on the first).
    args.devices, args.raw_device = [str(d) for d in check_devices(args.device)], args.device
    args.device = args.devices[0]
    worker = args.worker is not None
    STOP.clear()  # a new run (tests run several in one process)
    if worker:  # before anything slow: from here on a stop signal fails the running trial cleanly
        signal.signal(signal.SIGTERM, _stop_once)
        signal.signal(signal.SIGINT, _stop_once)
    given, asked, final_epochs, jobs, val_note = _config(args)
    name = args.study_name or f"{args.dataset}-nas"
    url, migrated = _storage_url(args.storage, name, jobs)
    label = redact(url)  # what is printed and stored: never a password
    settings, kept, full, split, study, created = _open(args, given, url, name, final_epochs)
    out = Path(args.out) if args.out else RESULTS / name
    say = _sayer(args.worker)
    if not worker:
        run_key = _announce(args, argv, study, created, settings, full, split, jobs, out, label,
                            (f"; copied from {redact(default_storage(name))} for --jobs" if migrated else "")
                            + (f"; kept the settings it was begun with: {', '.join(kept)}" if kept else ""),
                            val_note if settings.val_size == asked.val_size else "")
        # Ctrl-C, or a scheduler's SIGTERM: stop, leaving a resumable study (search.workers.request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    t0 = time.time()
    trained_before = count(study.get_trials(deepcopy=False)).trained
    try:
        counts = _search(args, argv, study, settings, full, split, jobs, url, say)
    except KeyboardInterrupt:
        if worker:
            return 130  # the parent says what happened, once
        stopped = stopped_by_interrupt(study.get_trials(deepcopy=False), t0)
        where = (f"trial{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} marked failed and queued "
                 "again; " if stopped else "")
        print(f"interrupted: {where}{count(study.get_trials(deepcopy=False)).line()} of {args.trials} wanted; run "
              "the same command to resume", file=sys.stderr)
        return 130
    except SearchStopped as e:
        print(f"error: {'[w%d] ' % args.worker if worker else ''}{e}", file=sys.stderr)
        return 1
    except STORAGE_ERRORS as e:  # e.g. the database server stopped: one line, not a traceback
        raise lost_storage(label, e) from None
    if worker:
        return 0
    search_seconds = time.time() - t0
    study.set_user_attr(run_key, {**study.user_attrs[run_key], "seconds": round(search_seconds, 1)})
    print(f"search: {counts.line()}; {counts.epochs} epochs trained of {counts.trained * settings.trial_epochs} "
          f"without pruning; {_took(study, run_key, search_seconds, counts.trained > trained_before)}")
    final, final_seconds = None, 0.0
    if not args.no_final:
        t1 = time.time()
        try:
            final = _final(args, study, settings, full, out, final_epochs, url)
        except KeyboardInterrupt:
            return _interrupted_final(out)
        final_seconds = time.time() - t1
    _summary(args, study, settings, counts, final, out, label, name, search_seconds, final_seconds, final_epochs)
    return 0


def _final(args, study, settings, full, out: Path, final_epochs: int, url: str) -> dict:
    """The final retrain of the winner from --final-seeds seeds, and the --compare baselines beside it."""
    from .final import retrain_and_compare

    # --compare study:NAME is looked up in --compare-storage, else here; opened only if one is named
    other = resolve_url(args.compare_storage or url, "")
    return retrain_and_compare(study, settings, full, out, final_epochs, args.device, not args.quiet, bar=_bar(args),
                               seeds=args.final_seeds, compare=args.compare_names,
                               other_storage=lambda: open_storage(other, create=False))


def _interrupted_final(out: Path) -> int:
    print(f"interrupted during the final retrain; its checkpoint is in {out}/; run the same command to resume",
          file=sys.stderr)
    return 130


def _sayer(worker: int | None):
    """print, or for a --jobs worker print behind its tag: [w3], or [w3 cuda:1] on a GPU (search.workers)."""
    if worker is None:
        return lambda line: print(line, flush=True)
    gpu = os.environ.get("TINYNAS_GPU", "")
    tag = f"[w{worker}{' ' + gpu if gpu.startswith('cuda') else ''}] "
    return lambda line: print(f"{tag}{line}", flush=True)


def _config(args: argparse.Namespace) -> tuple[dict, SearchSettings, int, int, str]:
    """(the settings given, the settings for a new study, final epochs, jobs, a note on the validation split)
    from the flags and the dataset's defaults; SearchError for a bad one."""
    from .prescreen import parse_prescreen
    from .workers import parse_jobs, plan_workers

    if args.dataset not in DEFAULTS:
        raise SearchError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DEFAULTS)}")
    objectives = parse_objectives(args.objectives)
    multi = cost_name(objectives) is not None
    if args.pruner is None:
        args.pruner = "none" if multi else "median"
    if args.pruner not in PRUNERS:
        raise SearchError(f"unknown pruner {args.pruner!r}; choose one of: {', '.join(PRUNERS)}")
    if multi and args.pruner != "none":
        raise SearchError(f"--pruner {args.pruner} cannot prune --objectives {objectives}: Optuna does not prune "
                          "multi-objective studies; leave --pruner out")
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise SearchError(f"unknown sampler {args.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    d = DEFAULTS[args.dataset]
    for flag in ("trials", "trial_epochs", "final_epochs", "final_seeds", "batch_size", "max_params", "min_rf",
                 "max_macs", "subset_train", "subset_test"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    prescreen, proxy = parse_prescreen(args.prescreen, args.proxy)
    args.compare_names = parse_compare(args.compare)
    # The flags as given (None: not given); search.settings.resolve_settings adds the study's stored values
    # and the defaults. The validation size's default, with --subset-train, scales to the subset (val_note).
    given = dict(dataset=args.dataset, max_params=args.max_params, min_rf=args.min_rf, trial_epochs=args.trial_epochs,
                 val_size=parse_val_size(args.val_size) if args.val_size else None, seed=args.seed,
                 subset_train=args.subset_train, batch_size=args.batch_size, max_macs=args.max_macs,
                 objectives=objectives, prescreen=prescreen, proxy=proxy, sampler=args.sampler,
                 **latency_settings(args.latency_table, args.max_latency_ms, objectives))
    settings, _ = resolve_settings(given)
    val_note = "" if args.val_size else default_val_size(args.dataset, args.subset_train)[1]
    check_satisfiable(settings.rules)  # before any data or training
    jobs = parse_jobs(args.jobs)
    if jobs == 1 and len(args.devices) > 1 and "," in args.raw_device:
        raise SearchError(f"--device {args.raw_device} lists {len(args.devices)} devices but --jobs 1 trains on one: "
                          "give --jobs N (or auto) to spread workers over them, or one device")
    args.placement = plan_workers(args.devices, jobs)
    return given, settings, resolve(args.final_epochs, per_dataset=d.final_epochs), args.placement.jobs, val_note


def _storage_url(storage: str | None, name: str, jobs: int) -> tuple[str, bool]:
    """(storage URL, whether a study begun with --jobs 1 was moved to the journal file for --jobs N)."""
    url = resolve_url(storage, name)
    if jobs == 1 or not is_sqlite(url):
        return url, False
    if storage:
        raise SearchError(f"--jobs {jobs} needs a storage several processes can write, and SQLite takes one "
                          "writer: leave --storage out (a journal file results/<study>.journal is used), or "
                          "give FILE.journal or a database server")
    journal = default_journal(name)
    return journal, migrate_to_journal(url, journal, name)


def _open(args: argparse.Namespace, given: dict, url: str, name: str, final_epochs: int):
    """(settings, kept, full data, search split, study, created): the storage is opened first (a typo in it
    should not wait for a download), but if the data or the settings then fail, a storage file (or folder)
    this run created is removed again: no empty study."""
    from .data import check_steps, load_full, search_split
    from .study import make_pruner, open_study, peek_settings

    file = local_file(url)
    with removed_on_error(*([file] if file else [])):
        storage = open_storage(url, stale_callback=requeue)
        full = load_full(args.dataset, args.data_dir, args.subset_train, args.subset_test, args.seed,
                         download=not args.no_download)
        # A study begun under older defaults resumes with the values it was measured with (settings.RESUMED).
        settings, kept = resolve_settings(given, peek_settings(storage, name))
        split = search_split(full, settings)
        if not args.no_final:
            check_steps(len(full.y_train), settings.batch_size, final_epochs, "the final retrain")
        study, created = open_study(storage, name, settings, make_pruner(args.pruner, settings.trial_epochs),
                                    redact(url), stream=args.worker or 0)
    return settings, kept, full, split, study, created


def _announce(args, argv, study, created, settings, full, split, jobs, out, label, notes, val_note) -> str:
    """Once per run, by the parent: the seed presets (a new study), the machine, the plan; the run's key."""
    from .data import store_normalisation
    from .report import RUN_PREFIX
    from .study import enqueue_presets

    presets = enqueue_presets(study, full.num_classes) if created and not args.no_presets else []
    store_normalisation(study, full)  # for search.export's MEAN and STD
    info = machine_info(args.device)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    run_key = f"{RUN_PREFIX}{started}:{info['host']}:{info['pid']}"
    command = shlex.join([os.path.basename(sys.executable), "-m", "search.run", *(sys.argv[1:] if argv is None else argv)])
    study.set_user_attr(run_key, {**info, "started": started, "command": command})
    print(f"study {study.study_name} ({'new' if created else 'resumed'}) in {label}; outputs in {out}/{notes}")
    print(f"data: {full.name}, {len(split.y_train):,} training / {len(split.y_test):,} validation images"
          + (f" ({val_note})" if val_note else "") + "; "
          f"{plural(settings.trial_epochs, 'epoch')} per trial on {info['device']}"
          + (f" ({info['device_name']})" if info["device_name"] != "cpu" else "")
          + f"; sampler {settings.sampler}, pruner {args.pruner}"
          + (f" (objectives {settings.objectives}: multi-objective studies cannot be pruned)"
             if cost_name(settings.objectives) else "")
          + (f"; prescreen: best of {settings.prescreen} by {settings.proxy}" if settings.prescreen > 1 else "")
          + (f"; enqueued presets {', '.join(presets)}" if presets else "")
          + (f"; {jobs} workers at once" + (f" ({args.placement.describe()})" if info["device"] != "cpu" else "")
             if jobs > 1 else ""))
    print(f"watch it: {dashboard_command(label)}", flush=True)
    return run_key


def _search(args, argv, study, settings, full, split, jobs, url, say) -> Counts:
    """The one search path: this process trains (one process, or a worker), or it starts `jobs` workers
    that do, and waits. KeyboardInterrupt when stopped; SearchStopped when it, or a worker, gave up."""
    from .prescreen import make_prescreen
    from .loop import Search, make_train_fn
    from .workers import SlotLock, cpu_threads, run_workers

    if jobs > 1 and args.worker is None:
        raw = sys.argv[1:] if argv is None else list(argv)
        codes, interrupted = run_workers([*raw, *([] if args.storage else ["--storage", url])], jobs,
                                         cpu_threads(jobs), placement=args.placement)
        counts = count(study.get_trials(deepcopy=False))
        if interrupted:
            raise KeyboardInterrupt
        if counts.trained < args.trials:
            raise SearchStopped(f"the workers stopped (exit status {', '.join(map(str, codes))}) with "
                                f"{counts.line()} of {args.trials} wanted; fix the cause, then run the same command "
                                "to resume")
        return counts
    share = _device_share(args.device, f"{url}\n{study.study_name}")
    search = Search(study, settings, full.num_classes,
                    make_train_fn(split, settings, args.device, share, bar=_bar(args)), args.trials, log=say,
                    lock=SlotLock(f"{url}\n{study.study_name}"),
                    prescreen=make_prescreen(split, settings, args.device), epoch_lines=not args.quiet)
    return search.run()


def _device_share(device: str, key: str):
    """This process's share of its device (search.memory): a --jobs worker's from its environment
    (search.workers), its memory capped when others share the GPU; a lone run's all of it."""
    from .memory import DeviceShare, apply_share
    from .workers import worker_device

    named, workers = worker_device()
    apply_share(device, workers)
    return DeviceShare(key, named or device, workers)


def _took(study: optuna.Study, run_key: str, seconds: float, trained_now: bool) -> str:
    """This run's search time; for a run that found the study finished, the earlier runs' time, said so."""
    if trained_now:
        return f"{seconds:.0f} s"
    earlier = sum(v.get("seconds", 0.0) for k, v in study.user_attrs.items()
                  if k.startswith(run_key.split(":", 1)[0] + ":") and k != run_key and isinstance(v, dict))
    return f"already done: nothing trained in this run ({earlier:.0f} s in earlier runs)"


def _bar(args: argparse.Namespace) -> bool:
    """A tqdm bar per epoch: asked for (--progress), or on a terminal unless --quiet; workers draw none."""
    return args.worker is None and not args.quiet and (args.progress or sys.stderr.isatty())


def _over_seeds(final: dict) -> str:
    s = final.get("seeds") or {}
    return f" (seed {s['exported_seed']}; {s['mean']:.4f} +- {s['std']:.4f} over {s['n']} seeds)" if s.get("n", 1) > 1 else ""


def _summary(args, study, settings, counts, final, out, label, name, search_seconds, final_seconds,
             final_epochs) -> None:
    """The report files, the winner, and the --json line."""
    from .report import write_and_list
    from .trials import best_trial, val_acc

    best = best_trial(study.get_trials(deepcopy=False))
    best_acc = val_acc(best) if best else None
    print(f"best trial {best.number if best else None}: validation accuracy "
          f"{best_acc if best else float('nan'):.4f}"
          + (f"; test accuracy {final['test_acc']:.4f}" + _over_seeds(final)
             + f" after {plural(final_epochs, 'epoch')} ("
             + (f"retrained earlier, {final['wall_seconds']:.0f} s)" if final.get("reused") else f"{final_seconds:.0f} s)")
             if final else ""))
    paths = write_and_list(study, out, label, final)
    if args.json:
        print(json.dumps({"study": name, "storage": label, "dataset": args.dataset, "trials": args.trials,
                          **counts.as_dict(), "epochs_without_pruning": counts.trained * settings.trial_epochs,
                          "best_trial": best.number if best else None, "best_val_acc": best_acc,
                          "test_acc": final["test_acc"] if final else None,
                          "test_acc_seeds": (final.get("seeds") or {}).get("test_accs") if final else None,
                          "search_seconds": round(search_seconds, 1),
                          "final_seconds": round(final_seconds, 1), "out": str(out),
                          "paths": {k: str(v) for k, v in paths.items()}}))


if __name__ == "__main__":
    from space.cli import run_cli
    sys.unraisablehook = quiet_lost_interrupts  # a lost KeyboardInterrupt is obeyed, not printed (search.workers)
    run_cli(main, errors=ERRORS)
