"""The run object: what one command (search.run, a --jobs worker, search.retrain) works on, built once.

A `Run` carries the study, its settings, the data, the output folder, the device and how to talk; every step
below the command line (the search loop's set-up, the final retrain, the comparison, the report) takes it
instead of a list of loose arguments. The final phase's own choices (epochs, seeds, baselines) travel in
its `FinalPlan`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from train.data import ImageData

from .settings import SearchError, SearchSettings
from .storage import default_journal, default_storage, local_file, open_storage, redact, resolve_url

__all__ = ["FinalPlan", "Run"]


@dataclass(frozen=True)
class FinalPlan:
    """The final phase: the winner (or trial `trial`; with `finalists` > 1 the best of the K best trials
    re-ranked at this fidelity) retrained from `seeds` seeds for `epochs` epochs, beside the --compare
    baselines (search.compare names), each from the same seeds."""

    epochs: int
    seeds: int = 1
    compare: tuple[str, ...] = ()
    compare_storage: str | None = None  # where study:NAME baselines are looked up (None: Run.compare_storage)
    trial: int | None = None  # None: the study's best trial (or the best re-ranked finalist)
    finalists: int = 1  # the best trials re-ranked at the final fidelity before the winner is chosen (search.finalists)


@dataclass
class Run:
    """One command's run of one study."""

    study: optuna.Study
    settings: SearchSettings
    data: ImageData  # the training images (a --subset-train's) and the test images: the final retrain's
    out: Path  # outputs: report, leaderboard, the winner's files, runs/ (the retrain cache)
    storage: str = ""  # the study's storage URL, unredacted: opened, never printed (see `label`)
    device: str = "auto"
    log: Callable[[str], None] = print
    epoch_lines: bool = False  # a line per epoch of every training run
    bar: bool = False  # a tqdm bar per epoch (with epoch_lines)
    final: FinalPlan | None = None  # None: no final phase in this run
    notes: list[str] = field(default_factory=list)  # said once in the announcement (e.g. settings kept)
    split: ImageData | None = None  # the search's: training images less the validation ones, which are its "test"
    created: bool = False  # the study was created by this run

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def label(self) -> str:
        """The storage as printed and stored: never a password."""
        return redact(self.storage)

    def compare_storage(self, name: str) -> optuna.storages.BaseStorage:
        """The storage a study:NAME baseline is looked up in: the plan's --compare-storage; else this study's
        storage if it holds NAME; else NAME's own storage file beside this study's (NAME.journal, then NAME.db:
        a control searched with its default storage, e.g. --sampler random --study-name NAME). SearchError
        names what was looked at."""
        plan = self.final
        if plan and plan.compare_storage:
            return open_storage(resolve_url(plan.compare_storage, ""), create=False)
        own = open_storage(self.storage, create=False)
        if name in {s.study_name for s in optuna.get_all_study_summaries(own)}:
            return own
        file = local_file(self.storage)
        beside = [default_journal(name, file.parent), default_storage(name, file.parent)] if file else []
        for url in beside:
            if local_file(url).is_file():
                return open_storage(url, create=False)
        looked = ", ".join([self.label, *(redact(u) for u in beside)])
        raise SearchError(f"--compare study:{name}: no study {name!r} in {looked}; give --compare-storage URL")
