"""Creating, resuming and checking a study: its settings, sampler, pruner and warm-start presets.

The study maximises validation accuracy; with --objectives accuracy,params (or ,macs) it also minimises
that cost, a multi-objective study with the same sampler (--sampler, see make_sampler). Its user attrs hold the
`SearchSettings` it was created with (a resume with other settings is refused) and a flag saying the
seed presets were enqueued, so that a resumed study never enqueues them again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
import zlib

import optuna
from optuna.storages import BaseStorage

from space import PRESETS, params_from_genome
from space.searchspace import RESUMABLE_SPACES

from .record import enqueue
from .settings import SearchError, SearchSettings, directions

__all__ = ["SETTINGS_KEY", "PRESETS_KEY", "PRUNERS", "SAMPLERS", "make_sampler", "make_pruner", "open_study",
           "load_study", "stored_settings", "enqueue_presets", "peek_settings"]

SETTINGS_KEY = "settings"
PRESETS_KEY = "presets_enqueued"
PRUNERS = ("median", "hyperband", "none")


SAMPLERS = ("tpe", "random", "gp", "nsga2", "qmc")


def make_sampler(name: str, seed: int, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, by its --sampler name; all read the rules' trial.set_constraint values where they
    model anything (tpe, gp, nsga2), and all serve one or several objectives.

    tpe (default): TPE over the space's parameters (grouped: a net asks only for the choices it has), learning
    the constraints from infeasible trials. The same
    sampler serves multi-objective studies: Optuna's TPESampler splits good from bad trials by non-domination
    rank there (MOTPE). It is chosen over NSGA-II because a search trains ~100 candidates: NSGA-II's first
    generation (its default population, 50 trials) is random sampling and it improves only over several
    generations, while TPE models the history from its 10th trial on. random: the control a search must beat
    (Li & Talwalkar 2019). gp: Optuna's Gaussian-process sampler (constrained acquisition; Optuna suggests it
    below ~500 trials). nsga2: the genetic algorithm, population 20 so that a 100-trial search sees several
    generations. qmc: a scrambled Sobol sequence (space-filling; categorical parameters are drawn at random).

    `salt` (e.g. the number of trials already in the study) gives a resumed or additional worker its own
    random stream, so it does not replay the candidates of the first run; a fresh study stays reproducible.
    """
    stream = int(hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest()[:8], 16)
    if name == "tpe":
        # multivariate: the parameters interact (widths x depths make the parameter count), so model them jointly.
        # constant_liar: concurrent workers treat each other's running trials as bad, and stay apart.
        # group: a trial holds only the choices its net has (space 3), so the parameters are conditional; TPE
        # models each group of parameters that occur together jointly instead of falling back to independent.
        return optuna.samplers.TPESampler(seed=stream, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=stream)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=stream, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=stream, population_size=20)
    if name == "qmc":
        # One sequence per study whatever the worker: the sampler counts its points in the study, so every
        # worker must draw from the same scrambled sequence (seed, not stream) to continue it.
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False,
                                          warn_asynchronous_seeding=False)
    raise SearchError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def make_pruner(name: str, trial_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # n_min_trials rather than n_startup_trials: the latter would count rejected (never trained, infeasible)
        # trials, which report no epochs. No verdict before more than half the schedule has run: during
        # OneCycle's warm-up and high-lr phase validation accuracy is noise, often chance level (measured on
        # digits, 4 epochs: judging at epoch 2 pruned nets that would have finished at 0.95-0.98).
        return optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=trial_epochs // 2 + 1,
                                           n_min_trials=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(trial_epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


def _settings_in(user_attrs: dict) -> SearchSettings | None:
    d = user_attrs.get(SETTINGS_KEY)
    return SearchSettings.from_dict(d) if d is not None else None


def stored_settings(study: optuna.Study) -> SearchSettings | None:
    return _settings_in(study.user_attrs)


def peek_settings(storage: BaseStorage, name: str) -> SearchSettings | None:
    """The settings stored in study `name` (the stored rung of search.settings.resolve), None if there is no
    such study yet or it stores none; without loading the study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return _settings_in(storage.get_study_user_attrs(study_id))


def open_study(storage: BaseStorage, name: str, settings: SearchSettings, pruner: optuna.pruners.BasePruner,
               storage_label: str = "", stream: int = 0) -> tuple[optuna.Study, bool]:
    """(study, created): create it, or resume it if its stored settings equal `settings`.

    `created` is True in exactly one of several workers that start on a new study at the same moment: the
    storage creates a study name once and refuses the others (DuplicatedStudyError), who load it instead.
    `stream` tells apart workers started at the same moment on one node (search.run --jobs: the worker's
    index), which would otherwise draw the same sampler stream and propose the same candidates.
    """
    wanted = directions(settings.objectives)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=wanted, pruner=pruner,
                                    sampler=make_sampler(settings.sampler, settings.seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=make_sampler(settings.sampler, settings.seed))
        created = False
    if [d.name.lower() for d in study.directions] != wanted:
        stored = stored_settings(study)
        if stored is not None and stored.objectives != settings.objectives:
            raise SearchError(f"study {name!r} in {storage_label} was created with --objectives {stored.objectives}, "
                              f"not {settings.objectives}; resume it with those, or start a new one with "
                              "--study-name NEW")
        raise SearchError(f"study {name!r} in {storage_label} has directions "
                          f"{', '.join(d.name.lower() for d in study.directions)}; it was not created by search.run")
    stored = stored_settings(study) if created else _wait_for_settings(study)
    if stored is None:
        if study.trials:
            raise SearchError(f"study {name!r} in {storage_label} has trials but no search settings; "
                              "it was not created by search.run: pick another --study-name")
        study.set_user_attr(SETTINGS_KEY, settings.to_dict())
    elif stored.space != settings.space or stored.space not in RESUMABLE_SPACES:
        raise SearchError(f"study {name!r} in {storage_label} was sampled from search space version {stored.space}, "
                          f"this version samples {', '.join(map(str, RESUMABLE_SPACES))}: its trials cannot guide "
                          "this sampler, so it is not resumed; start a new one with --study-name NEW (report and "
                          "export still read it)")
    elif stored != settings:
        diff = "; ".join(settings.differences(stored))
        raise SearchError(f"study {name!r} in {storage_label} was created with other settings ({diff}); "
                          f"resume it with its settings, or start a new one with --study-name NEW "
                          f"(or delete the storage)")
    # Give each run (a resume, another worker) its own sampler stream; see make_sampler. Workers that start
    # together see the same trials, so only the creator's stream may be a function of the trials alone;
    # `stream` (search.run --jobs: the worker's index) parts workers of one node even on one pid.
    salt = (len(study.trials) * 1_000_003 + 7919 * stream
            + (0 if created else os.getpid() + zlib.crc32(socket.gethostname().encode())))
    study.sampler = make_sampler(settings.sampler, settings.seed, salt=salt)
    return study, created


def _wait_for_settings(study: optuna.Study, seconds: float = 10.0) -> SearchSettings | None:
    """The settings of a study another worker has just created, once it has stored them (None if it never
    does: it died, or the study is not search.run's)."""
    end = time.monotonic() + seconds
    while (stored := stored_settings(study)) is None and not study.trials and time.monotonic() < end:
        time.sleep(0.1)  # the creator stores them right after creating the study
    return stored


def load_study(storage: BaseStorage, name: str, storage_label: str = "") -> optuna.Study:
    """An existing study (for retrain, report, export); SearchError if there is none of that name."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)] if storage else []
        hint = f"; studies there: {', '.join(names)}" if names else "; it holds no study"
        raise SearchError(f"no study {name!r} in {storage_label}{hint}") from None
    if stored_settings(study) is None:
        raise SearchError(f"study {name!r} in {storage_label} was not created by search.run (no settings)")
    return study


def enqueue_presets(study: optuna.Study, num_classes: int) -> list[str]:
    """Enqueue the seed presets as the first candidates, once per study; returns the names enqueued."""
    if study.user_attrs.get(PRESETS_KEY):
        return []
    # Flag first: a crash between the two leaves the presets out rather than enqueued twice.
    study.set_user_attr(PRESETS_KEY, True)
    names = []
    for name, genome in PRESETS.items():
        genome = dataclasses.replace(genome, num_classes=num_classes)
        # params: the nearest point of the space, for TPE; genome: what is actually trained.
        enqueue(study, params_from_genome(genome), preset=name, genome=genome.to_json())
        names.append(name)
    return names
