"""What search.run and its --jobs workers (search.worker) share: the flags, what they mean, and the run they open.

`configure` checks the flags and resolves them against the dataset's defaults (a `Launch`), before any
storage, data or output is touched; `open_run` then opens the storage, loads the data and opens (or
creates) the study, as one `search.context.Run`; `search_here` runs the search loop in this process.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from space import check_satisfiable
from space.rules import RulesError, add_rule_flags
from train.data import canonical_dataset, dataset_label
from train.defaults import DEFAULTS, defaults_for
from train.device import check_devices
from train.engine import resolve_device
from train.files import DATA_DIR, RESULTS, removed_on_error

from .cli import add_final_args, add_study_args, make_parser, parse_compare, positive_int
from .context import FinalPlan, Run
from .compare import check_final_seeds
from .data import check_steps, load_study_data, search_split
from .final import check_final
from .finalists import MAX_FINALISTS
from .lifecycle import Counts, requeue
from .loop import Search, make_train_fn
from .memory import DeviceShare, apply_share
from .prescreen import make_prescreen, parse_prescreen
from .settings import (SearchError, SearchSettings, cost_name, default_val_size, defaults_text,
                       latency_settings, parse_objectives, parse_val_size, resolve, resolve_settings)
from .storage import default_journal, default_storage, is_sqlite, local_file, migrate_to_journal, open_storage, redact, resolve_url
from .study import PRUNERS, SAMPLERS, make_pruner, open_study, peek_settings
from .workers import Placement, SlotLock, parse_jobs, plan_workers, worker_device

__all__ = ["build_parser", "machine_info", "Launch", "configure", "default_study_name", "parse_test_size", "open_run",
           "search_here"]

DOC = """`python -m search.run --trials N [--dataset cifar10|digits|synthetic|PATH]`: search, retrain the winner, report."""


def machine_info(device: str) -> dict:
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


def build_parser(prog: str = "python -m search.run", doc: str | None = DOC) -> argparse.ArgumentParser:
    p = make_parser(prog, doc)
    p.add_argument("--trials", type=int, default=100, help="trained candidates the study should hold (default 100)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (default), digits (offline), synthetic (tests), or "
                   "the path of your own images: a folder of class folders (optionally inside train/ and test/) or "
                   "an .npz (README: Your own images)")
    p.add_argument("--test-size", default=None, help="a folder of class folders without test/: the test images carved "
                   "out of it, a count (500) or a fraction (default 0.2), stratified; stored with the study")
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
    p.add_argument("--quiet", action="store_true", help="no line per epoch (trials and final retrain) and no "
                   "progress bar; a line per trial stays")
    p.add_argument("--progress", action="store_true", help="draw the progress bar (trials and final retrain) even "
                   "when stderr is not a terminal (by default only a terminal gets one)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    return p

@dataclass
class Launch:
    """The flags of one search.run (or worker) process, checked and resolved before anything is opened."""

    args: argparse.Namespace
    argv: list[str]  # the command line as given (a worker's without its own --worker)
    given: dict  # the SearchSettings fields given by flags (None: not given), for resolve_settings
    settings: SearchSettings  # what a new study would be begun with (a resumed one may keep others)
    final_epochs: int
    placement: Placement  # the workers' devices (one job: this process's device)
    out: Path  # the output folder (--out, else results/<study>/): checked writable, not yet created
    val_note: str = ""  # how the default validation size was scaled to a --subset-train
    # The flags' rules that no genome meets, for a new study; a resumed one begun with other settings is
    # refused as such (search.study.open_study), which says more than "relax the constraints".
    unsatisfiable: RulesError | None = None

    @property
    def jobs(self) -> int:
        return self.placement.jobs

    @property
    def device(self) -> str:
        """This process's device: the first of --device's (the parent retrains there)."""
        return self.args.devices[0]


def configure(args: argparse.Namespace, argv: list[str]) -> Launch:
    """The Launch of these flags; SearchError for a bad one (before any storage, data or output is touched)."""
    args.devices, args.raw_device = [str(d) for d in check_devices(args.device)], args.device
    args.dataset = canonical_dataset(args.dataset)  # DataError for a path that is not there
    test_size = parse_test_size(args.test_size, args.dataset)
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
    for flag in ("trials", "trial_epochs", "final_epochs", "final_seeds", "finalists", "batch_size", "max_params", "min_rf",
                 "max_macs", "subset_train", "subset_test"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    check_final_seeds(args.final_seeds)
    out = Path(args.out) if args.out else RESULTS / (args.study_name or default_study_name(args.dataset))
    check_out_folder(out)
    if args.finalists > MAX_FINALISTS:
        raise SearchError(f"--finalists must lie in 1..{MAX_FINALISTS} (each is a retrain as long as the final one), "
                          f"got {args.finalists}")
    prescreen, proxy = parse_prescreen(args.prescreen, args.proxy)
    args.compare_names = parse_compare(args.compare)
    # The flags as given (None: not given); search.settings.resolve_settings adds the study's stored values
    # and the defaults. The validation size's default, with --subset-train, scales to the subset (val_note).
    given = dict(dataset=args.dataset, max_params=args.max_params, min_rf=args.min_rf, trial_epochs=args.trial_epochs,
                 val_size=parse_val_size(args.val_size) if args.val_size else None, seed=args.seed,
                 subset_train=args.subset_train, batch_size=args.batch_size, max_macs=args.max_macs,
                 objectives=objectives, prescreen=prescreen, proxy=proxy, sampler=args.sampler, test_size=test_size,
                 **latency_settings(args.latency_table, args.max_latency_ms, objectives, args.latency_rescale))
    settings, _ = resolve_settings(given)
    try:  # before any data or training; said in open_run, once it is known whether the study is new
        check_satisfiable(settings.rules)
        unsatisfiable = None
    except RulesError as e:
        unsatisfiable = e
    jobs = parse_jobs(args.jobs)
    if jobs == 1 and len(args.devices) > 1 and "," in args.raw_device:
        raise SearchError(f"--device {args.raw_device} lists {len(args.devices)} devices but --jobs 1 trains on one: "
                          "give --jobs N (or auto) to spread workers over them, or one device")
    return Launch(args, argv, given, settings, resolve(args.final_epochs, per_dataset=defaults_for(args.dataset).final_epochs),
                  plan_workers(args.devices, jobs), out,
                  "" if args.val_size else default_val_size(args.dataset, args.subset_train)[1], unsatisfiable)


def default_study_name(dataset: str) -> str:
    """<dataset>-nas: cifar10-nas, or for the user's own images the folder's (or .npz's) name, e.g. parts-nas."""
    return f"{dataset_label(dataset)}-nas"


def parse_test_size(text: str | None, dataset: str) -> int | float | None:
    """--test-size as images (500) or a fraction (0.2); SearchError where it is malformed or the dataset is a
    known one (its test set is fixed)."""
    if text is None:
        return None
    if dataset in DEFAULTS:
        raise SearchError(f"--test-size applies to a folder of class folders; {dataset} has its own test set")
    return parse_val_size(text, "--test-size")


def check_out_folder(out: Path) -> None:
    """SearchError (one line) unless `out` is, or can be made, a folder this process may write to."""
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SearchError(f"--out {out}: {existing} is a file, not a folder")
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise SearchError(f"--out {out}: {existing or out} is not writable; choose another --out")


def _storage_url(launch: Launch, name: str) -> tuple[str, bool]:
    """(storage URL, whether a study begun with --jobs 1 was moved to the journal file for --jobs N)."""
    storage, jobs = launch.args.storage, launch.jobs
    url = resolve_url(storage, name)
    if jobs == 1 or not is_sqlite(url):
        return url, False
    if storage:
        raise SearchError(f"--jobs {jobs} needs a storage several processes can write, and SQLite takes one "
                          "writer: leave --storage out (a journal file results/<study>.journal is used), or "
                          "give FILE.journal or a database server")
    journal = default_journal(name)
    return journal, migrate_to_journal(url, journal, name)


def open_run(launch: Launch, worker: int | None = None) -> Run:
    """The storage is opened first (a typo in it should not wait for a download), then the data and the
    study; if the data or the settings fail, a storage file (or folder) this run created is removed again: no
    empty study. `worker`: a --jobs worker's index (its sampler stream; it has no final phase)."""
    args = launch.args
    name = args.study_name or default_study_name(args.dataset)
    url, migrated = _storage_url(launch, name)
    file = local_file(url)
    with removed_on_error(*([file] if file else [])):
        storage = open_storage(url, stale_callback=requeue)
        if launch.unsatisfiable is not None and peek_settings(storage, name) is None:
            raise launch.unsatisfiable  # a new study: before any data is loaded
        # A study begun under older defaults resumes with the values it was measured with (settings.RESUMED),
        # its test split among them.
        settings, kept = resolve_settings(launch.given, peek_settings(storage, name))
        # settings' dataset, subset_train and seed are the flags' (none of them is resumed from the study)
        full = load_study_data(settings, args.data_dir, args.subset_test, download=not args.no_download)
        split = search_split(full, settings)
        if not args.no_final and worker is None:
            check_steps(len(full.y_train), settings.batch_size, launch.final_epochs, "the final retrain")
        study, created = open_study(storage, name, settings, make_pruner(args.pruner, settings.trial_epochs),
                                    redact(url), stream=worker or 0)
        if launch.unsatisfiable is not None:  # resumed with the settings it was begun with: still unsatisfiable
            check_satisfiable(settings.rules)
        final = None if args.no_final or worker is not None else FinalPlan(
            launch.final_epochs, args.final_seeds, tuple(args.compare_names), args.compare_storage,
            finalists=args.finalists)
        notes = ([f"; copied from {redact(default_storage(name))} for --jobs"] if migrated else []) \
            + ([f"; kept the settings it was begun with: {', '.join(kept)}"] if kept else [])
        run = Run(study, settings, full, launch.out, storage=url, device=launch.device, log=_sayer(worker),
                  epoch_lines=not args.quiet, bar=_bar(args, worker), final=final, notes=notes, split=split,
                  created=created)
        if final is not None:  # before the first trial: a baseline that is not there fails now, not after hours
            check_final(run)
    return run


def _sayer(worker: int | None):
    """print, or for a --jobs worker print behind its tag: [w3], or [w3 cuda:1] on a GPU (search.workers)."""
    if worker is None:
        return lambda line: print(line, flush=True)
    gpu = os.environ.get("TINYNAS_GPU", "")
    tag = f"[w{worker}{' ' + gpu if gpu.startswith('cuda') else ''}] "
    return lambda line: print(f"{tag}{line}", flush=True)


def _bar(args: argparse.Namespace, worker: int | None) -> bool:
    """A tqdm bar per epoch: asked for (--progress), or on a terminal unless --quiet; workers draw none."""
    return worker is None and not args.quiet and (args.progress or sys.stderr.isatty())


def search_here(run: Run, n_trials: int) -> Counts:
    """The search loop in this process (one process, or a --jobs worker) until the study holds n_trials
    trained; KeyboardInterrupt when stopped, SearchStopped when it gives up."""
    key = f"{run.storage}\n{run.name}"
    named, workers = worker_device()  # a --jobs worker's device, from its environment (search.workers)
    apply_share(run.device, workers)  # its memory capped when others share the GPU; a lone run's all of it
    share = DeviceShare(key, named or run.device, workers)
    search = Search(run.study, run.settings, run.data.num_classes,
                    make_train_fn(run.split, run.settings, run.device, share, bar=run.bar), n_trials, log=run.log,
                    lock=SlotLock(key), prescreen=make_prescreen(run.split, run.settings, run.device),
                    epoch_lines=run.epoch_lines)
    return search.run()
