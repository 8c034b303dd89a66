"""The architecture search: Optuna TPE over space.suggest_genome, pruned brief training, final retrain.

To follow one trial from ask to tell, read two modules: loop (Search.step: ask, propose, claim, train,
tell) and lifecycle (the trial's state: Phase, Outcome, claim, the heartbeat, the values told, requeue);
space/ and train/ do the rest (space also says, before any training, whether the rules can be met at
all), and settings is the config they read. --prescreen's scorer is injected into loop as the training is
(prescreen).

Modules, one concept each:
    settings     SearchSettings (the study's resolved config, stored with a schema version; migrate),
                 per-dataset defaults, SearchError
    lifecycle    a trial's state (through search.record): Phase, Outcome, classify,
                 count, claim (the exact --trials count), the heartbeat, tell, requeue, reap dead workers' trials
    loop         the ask/tell loop: Search.step (one ladder, one tell) and Search.run
    data         the train/validation split the search sees; the full data of the final retrain
    storage      --storage parsed into an Optuna storage (SQLite, server databases, journal files)
    liveness     whether a trial's worker is alive: its identity, host/pid checks, heartbeat, death verdict
    prescreen    --prescreen K: the best of K proposals by a zero-cost proxy
    study        create / resume a study, its sampler, pruner and warm-start presets
    workers      --jobs N: worker processes on one node, the lock they claim places under, which device each
                 trains on (every GPU of the node, round-robin), --jobs auto per GPU
    memory       workers sharing a GPU: memory caps, cache release, out-of-memory retried once or "too large"
    trials       reading trials: the winner, the Pareto front, the leaderboard, the trial a user names
    context      the run object (Run, FinalPlan): what one command works on, built once
    launch, worker  search.run's flags and the run they open; the --jobs worker's own entry point
    record       a trial's stored record (TrialRecord): every stored key, the only reader and writer
    seedrun      the one retrain path: a genome from a seed under the final recipe, scored once, cached
    finalists    --finalists K: the K best trials re-ranked at the final fidelity
    places       what a study remembers of its search.run: output and data folders, final epochs
    best         load_best: the retrained winner for Python users
    final        retrain the winner on all training images (--final-seeds seeds), test once, write the model files
    compare      --compare: baselines retrained under the winner's recipe and seeds, paired t intervals
    plots, report  report.md, leaderboard.csv and the PNG plots
    cli          the commands' shared parser pieces, the errors they print as one line, which study a reading
                 command means (locate)
    run, retrain, export, report   the commands (python -m search.<name>)
    bench        aggregate images/s of 1, 2, 4, ... jobs and the projected time of a 100-trial run
"""
import warnings

import optuna

from .settings import DEFAULTS, SearchError, SearchSettings

# Multivariate TPE, heartbeats and fail_stale_trials are "experimental" in Optuna: the warnings are noise here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# study.ask() warns that heartbeats are meant for optimize(); search.liveness.Heartbeat runs them for ask/tell.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

__all__ = ["SearchError", "SearchSettings", "DEFAULTS"]
