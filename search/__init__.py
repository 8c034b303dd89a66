"""The architecture search: Optuna TPE over space.suggest_genome, pruned brief training, final retrain.

Modules, one concept each:
    settings     SearchSettings (what makes trials comparable), per-dataset defaults, SearchError
    data         the train/validation split the search sees; the full data of the final retrain
    storage      --storage parsed into an Optuna storage (SQLite, server databases, journal files)
    liveness     trials of dead workers: heartbeats, host/pid checks, fail and enqueue again
    constraints  the rules as Optuna constraints; a satisfiability probe before any training
    study        create / resume a study, its sampler, pruner and warm-start presets
    runner       the ask/tell loop (reject, deduplicate, train, prune, count)
    workers      --jobs N: worker processes on one node, the lock that keeps the count exact, --jobs auto
    trials       reading trials: kinds, counts, the winner, the leaderboard
    final        retrain the winner on all training images, test once, write the model files
    plots, report  report.md, leaderboard.csv and the PNG plots
    run, retrain, export, report   the commands (python -m search.<name>)
    bench        aggregate images/s of 1, 2, 4, ... jobs and the projected time of a 100-trial run
"""
import warnings

import optuna

from .settings import DEFAULTS, SearchError, SearchSettings

# Multivariate TPE, heartbeats and fail_stale_trials are "experimental" in Optuna: the warnings are noise here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# study.ask() warns that heartbeats are meant for optimize(); search.liveness runs them for ask/tell.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

__all__ = ["SearchError", "SearchSettings", "DEFAULTS"]
