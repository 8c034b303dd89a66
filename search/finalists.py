"""`--finalists K`: the K best trials re-ranked at a higher fidelity before the final retrain.

A trial's validation accuracy after a few epochs is a noisy, low-fidelity estimate, and the best of many
noisy estimates is biased upwards (the winner's curse): the trial ranked first is often one that got lucky.
So the K best trials by validation accuracy (search.trials.ranked_trials: the order best_trial picks from)
are each retrained at the final phase's fidelity, its epochs, on the search's own split (the training
images less the validation ones; search.seedrun.retrain with the study's seed), and scored on the validation
images, never on the test set. The best of those re-ranked accuracies is the winner (ties: the better trial
rank). Every re-ranking run is cached like every retrain (a kill loses at most the epoch in progress, and the
same command trains no finalist twice), and the result is stored in the study (user attr "finalists"): the
report shows it, and search.retrain, search.export and search.report use the same winner. K = 1 is the plain
best trial: nothing is retrained.
"""
from __future__ import annotations

from optuna.trial import FrozenTrial

from space.cli import plural

from .context import Run
from .seedrun import retrain
from .settings import SearchError
from .trials import FINALISTS_KEY, genome_of, pick_trial, ranked_trials, val_acc

__all__ = ["MAX_FINALISTS", "choose_winner", "rerank"]

MAX_FINALISTS = 50  # each one is a retrain of the final phase's length: beyond this, say so instead


def choose_winner(run: Run) -> FrozenTrial:
    """The trial the final phase retrains: the plan's --trial, else the best of the re-ranked finalists
    (with --finalists K > 1), else the best trial."""
    plan = run.final
    if plan.trial is not None or plan.finalists <= 1:
        return pick_trial(run.study, plan.trial, trained=True)
    return pick_trial(run.study, rerank(run)["winner"], trained=True)


def rerank(run: Run) -> dict:
    """Retrain the K best trials on the search split for the final epochs, score them on the validation
    images, store and return the result (see the module docstring)."""
    plan, split = run.final, run.split
    if split is None:
        raise SearchError("re-ranking finalists needs the search's train/validation split")
    if not 1 <= plan.finalists <= MAX_FINALISTS:
        raise SearchError(f"--finalists must lie in 1..{MAX_FINALISTS}, got {plan.finalists}")
    top = ranked_trials(run.study.get_trials(deepcopy=False))[:plan.finalists]
    if not top:
        raise SearchError(f"study {run.name!r} has no completed trained trial to re-rank")
    seed = run.settings.seed
    run.log(f"finalists: the {plural(len(top), 'best trial')} ({', '.join(str(t.number) for t in top)}) retrained "
            f"for {plural(plan.epochs, 'epoch')} on the {len(split.y_train):,} search images, scored on the "
            f"{len(split.y_test):,} validation images")
    rows = []
    for rank, t in enumerate(top, 1):
        done = retrain(run, genome_of(t), seed, f"finalist trial {t.number}", data=split)
        rows.append({"trial": t.number, "rank": rank, "trial_val_acc": val_acc(t), "val_acc": done["test_acc"],
                     "key": done["key"]})
    best = max(rows, key=lambda r: (r["val_acc"], -r["rank"]))
    result = {"k": plan.finalists, "epochs": plan.epochs, "seed": seed, "n_train": int(len(split.y_train)),
              "n_val": int(len(split.y_test)), "rows": rows, "winner": best["trial"]}
    run.study.set_user_attr(FINALISTS_KEY, result)
    run.log(f"finalists re-ranked: trial {best['trial']} wins with validation accuracy {best['val_acc']:.4f} "
            f"(its trial: {best['trial_val_acc']:.4f}, rank {best['rank']} of {len(rows)})")
    return result
