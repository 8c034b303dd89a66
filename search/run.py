"""`python -m search.run --trials N [--dataset cifar10|digits|synthetic|PATH]`: search, retrain the winner, report.

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

import json
import os
import shlex
import signal
import sys
import time

import optuna

from space.cli import plural, run_cli

from .cli import ERRORS
from .context import Run
from .data import store_normalisation
from .final import describe_final, retrain_and_compare, say_interrupted
from .launch import Launch, build_parser, configure, machine_info, open_run, search_here
from .lifecycle import Counts, count, stopped_by_interrupt
from .places import store_places
from .loop import SearchStopped
from .report import RUN_PREFIX, write_and_list
from .settings import cost_name
from .storage import STORAGE_ERRORS, dashboard_command, lost_storage
from .study import enqueue_presets
from .trials import best_trial, val_acc
from .workers import STOP, cpu_threads, quiet_lost_interrupts, request_stop, run_workers

__all__ = ["main", "machine_info"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    STOP.clear()  # a new run (tests run several in one process)
    launch = configure(build_parser(doc=__doc__).parse_args(argv), argv)  # before anything is touched
    run = open_run(launch)
    run_key = _announce(run, launch)
    # Ctrl-C, or a scheduler's SIGTERM: stop, leaving a resumable study (search.workers.request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    t0 = time.time()
    trained_before = count(run.study.get_trials(deepcopy=False)).trained
    try:
        counts = _search(run, launch)
    except KeyboardInterrupt:
        stopped = stopped_by_interrupt(run.study.get_trials(deepcopy=False), t0)
        where = (f"trial{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} marked failed and queued "
                 "again; " if stopped else "")
        print(f"interrupted: {where}{count(run.study.get_trials(deepcopy=False)).line()} of {launch.args.trials} "
              "wanted; run the same command to resume", file=sys.stderr)
        return 130
    except SearchStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except STORAGE_ERRORS as e:  # e.g. the database server stopped: one line, not a traceback
        raise lost_storage(run.label, e) from None
    seconds = {"search": time.time() - t0, "final": 0.0}
    study = run.study
    study.set_user_attr(run_key, {**study.user_attrs[run_key], "seconds": round(seconds["search"], 1)})
    print(f"search: {counts.line()}; {counts.epochs} epochs trained of {counts.trained * run.settings.trial_epochs} "
          f"without pruning; {_took(study, run_key, seconds['search'], counts.trained > trained_before)}")
    final = None
    if run.final is not None:
        t1 = time.time()
        try:
            final = retrain_and_compare(run)
        except KeyboardInterrupt:
            return say_interrupted(run)
        seconds["final"] = time.time() - t1
    _summary(run, launch, counts, final, seconds)
    return 0


def _announce(run: Run, launch: Launch) -> str:
    """Once per run: the seed presets (a new study), the machine, the plan; the run's key."""
    args, study, settings, full, split = launch.args, run.study, run.settings, run.data, run.split
    presets = enqueue_presets(study, full.num_classes) if run.created and not args.no_presets else []
    store_normalisation(study, full)  # for search.export's MEAN and STD
    # for the commands that follow (search.retrain, export, report): the same folders and final length
    store_places(study, run.out, args.data_dir, launch.final_epochs)
    info = machine_info(run.device)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    key = f"{RUN_PREFIX}{started}:{info['host']}:{info['pid']}"
    command = shlex.join([os.path.basename(sys.executable), "-m", "search.run", *launch.argv])
    study.set_user_attr(key, {**info, "started": started, "command": command})
    val_note = launch.val_note if settings.val_size == launch.settings.val_size else ""
    print(f"study {study.study_name} ({'new' if run.created else 'resumed'}) in {run.label}; outputs in "
          f"{run.out}/{''.join(run.notes)}")
    print(f"data: {full.name}, {len(split.y_train):,} training / {len(split.y_test):,} validation images"
          + (f" ({val_note})" if val_note else "") + "; "
          f"{plural(settings.trial_epochs, 'epoch')} per trial on {info['device']}"
          + (f" ({info['device_name']})" if info["device_name"] != "cpu" else "")
          + f"; sampler {settings.sampler}, pruner {args.pruner}"
          + (f" (objectives {settings.objectives}: multi-objective studies cannot be pruned)"
             if cost_name(settings.objectives) else "")
          + (f"; prescreen: best of {settings.prescreen} by {settings.proxy}" if settings.prescreen > 1 else "")
          + (f"; enqueued presets {', '.join(presets)}" if presets else "")
          + (f"; {launch.jobs} workers at once" + (f" ({launch.placement.describe()})" if info["device"] != "cpu"
                                                   else "") if launch.jobs > 1 else ""))
    if run.final is not None:
        print(describe_final(run))
    print(f"watch it: {dashboard_command(run.label)}", flush=True)
    return key


def _search(run: Run, launch: Launch) -> Counts:
    """This process trains (one job), or it starts the --jobs workers (search.worker) and waits.
    KeyboardInterrupt when stopped; SearchStopped when it, or a worker, gave up."""
    n = launch.args.trials
    if launch.jobs == 1:
        return search_here(run, n)
    argv = [*launch.argv, *([] if launch.args.storage else ["--storage", run.storage])]
    codes, interrupted = run_workers(argv, launch.jobs, cpu_threads(launch.jobs), placement=launch.placement)
    counts = count(run.study.get_trials(deepcopy=False))
    if interrupted:
        raise KeyboardInterrupt
    if counts.trained < n:
        raise SearchStopped(f"the workers stopped (exit status {', '.join(map(str, codes))}) with "
                            f"{counts.line()} of {n} wanted; fix the cause, then run the same command to resume")
    return counts


def _took(study: optuna.Study, run_key: str, seconds: float, trained_now: bool) -> str:
    """This run's search time; for a run that found the study finished, the earlier runs' time, said so."""
    if trained_now:
        return f"{seconds:.0f} s"
    earlier = sum(v.get("seconds", 0.0) for k, v in study.user_attrs.items()
                  if k.startswith(run_key.split(":", 1)[0] + ":") and k != run_key and isinstance(v, dict))
    return f"already done: nothing trained in this run ({earlier:.0f} s in earlier runs)"


def _over_seeds(final: dict) -> str:
    s = final.get("seeds") or {}
    return f" (seed {s['exported_seed']}; {s['mean']:.4f} +- {s['std']:.4f} over {s['n']} seeds)" if s.get("n", 1) > 1 else ""


def _summary(run: Run, launch: Launch, counts: Counts, final: dict | None, seconds: dict[str, float]) -> None:
    """The report files, the winner, and the --json line."""
    best = best_trial(run.study.get_trials(deepcopy=False))
    if final:  # the winner: the best trial, or the best re-ranked finalist (search.finalists)
        best = next(t for t in run.study.get_trials(deepcopy=False) if t.number == final["trial"])
    best_acc = val_acc(best) if best else None
    print(f"{'winner: trial' if final else 'best trial'} {best.number if best else None}: validation accuracy "
          f"{best_acc if best else float('nan'):.4f}"
          + (f"; test accuracy {final['test_acc']:.4f}" + _over_seeds(final)
             + f" after {plural(run.final.epochs, 'epoch')} ("
             + (f"retrained earlier, {final['wall_seconds']:.0f} s)" if final.get("reused")
                else f"{seconds['final']:.0f} s)")
             if final else ""))
    paths = write_and_list(run.study, run.out, run.label, final)
    if launch.args.json:
        print(json.dumps({"study": run.name, "storage": run.label, "dataset": launch.args.dataset,
                          "trials": launch.args.trials, **counts.as_dict(),
                          "epochs_without_pruning": counts.trained * run.settings.trial_epochs,
                          "best_trial": best.number if best else None, "best_val_acc": best_acc,
                          "test_acc": final["test_acc"] if final else None,
                          "test_acc_seeds": (final.get("seeds") or {}).get("test_accs") if final else None,
                          "search_seconds": round(seconds["search"], 1),
                          "final_seconds": round(seconds["final"], 1), "out": str(run.out),
                          "paths": {k: str(v) for k, v in paths.items()}}))


if __name__ == "__main__":
    sys.unraisablehook = quiet_lost_interrupts  # a lost KeyboardInterrupt is obeyed, not printed (search.workers)
    run_cli(main, errors=ERRORS)
