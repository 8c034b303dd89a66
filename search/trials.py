"""Reading a study's trials: the winner, the Pareto front, the leaderboard, a trial named by the user.

What became of each trial (its Outcome) and the counts are search.lifecycle's.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from space import Genome

from .lifecycle import Outcome, classify, is_enqueued, rejected_reason, state_columns
from .record import TrialRecord
from .settings import SearchError

# The study user attr holding the --finalists re-ranking (search.finalists): {"k", "epochs", "seed", "n_train",
# "n_val", "rows": [{"trial", "rank", "trial_val_acc", "val_acc", "key"}], "winner"}.
FINALISTS_KEY = "finalists"

__all__ = ["FINALISTS_KEY", "best_trial", "ranked_trials", "finalists_winner", "pareto_trials", "val_acc", "trained_val_acc", "genome_of", "pick_trial", "rejected_fraction",
           "leaderboard", "pareto_front"]

def pareto_front(cost: Sequence[float], acc: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both lower cost and higher accuracy, by cost.
    Of identical points only the first is kept."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -acc[i]))
    front, best = [], float("-inf")
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def genome_of(t: FrozenTrial) -> Genome:
    genome = TrialRecord.of(t).genome_of()
    if genome is None:
        raise SearchError(f"trial {t.number} has no genome recorded")
    return genome


def _params(t: FrozenTrial) -> int:
    return int(TrialRecord.of(t).n_params or 0)


def val_acc(t: FrozenTrial) -> float | None:
    """The validation accuracy a trial was told with (the first objective), None if it has none."""
    return float(t.values[0]) if t.values else None


def _feasible_completed(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if classify(t) == Outcome.COMPLETED and t.values and all(v <= 0 for v in t.constraints.values())]


def pareto_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The Pareto front (pareto_front) of the trained, completed, feasible trials, by cost: in a
    multi-objective study over its [accuracy, cost] values, otherwise over accuracy and parameters (as the
    report's accuracy-vs-parameters plot has always shown)."""
    done = _feasible_completed(trials)
    cost = [float(t.values[1]) if len(t.values) > 1 else float(_params(t)) for t in done]
    return [done[i] for i in pareto_front(cost, [val_acc(t) for t in done])]


def ranked_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a winner is chosen from, best first: trained, feasible, COMPLETE trials by validation
    accuracy; ties: fewer parameters, then the earlier trial. Pruned trials are out: their accuracy after
    fewer epochs is not comparable. In a multi-objective study only the members of the Pareto front, so that
    the winner is one (an equally accurate trial with a lower cost beats one with fewer parameters)."""
    done = _feasible_completed(list(trials))
    if done and len(done[0].values) > 1:
        done = pareto_trials(done)
    return sorted(done, key=lambda t: (-val_acc(t), _params(t), t.number))


def best_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The first of ranked_trials (None when there is none)."""
    ranked = ranked_trials(trials)
    return ranked[0] if ranked else None


def finalists_winner(study: optuna.Study) -> int | None:
    """The trial --finalists re-ranking chose (search.finalists), while the study's best trials are still the
    ones it re-ranked; None otherwise."""
    stored = study.user_attrs.get(FINALISTS_KEY)
    if not stored:
        return None
    top = [t.number for t in ranked_trials(study.get_trials(deepcopy=False))[:stored["k"]]]
    return stored["winner"] if top == [r["trial"] for r in stored["rows"]] else None


def rejected_fraction(trials: Iterable[FrozenTrial]) -> list[bool]:
    """For every candidate the sampler proposed, in order: was it rejected?"""
    return [classify(t) == Outcome.REJECTED for t in sorted(trials, key=lambda t: t.number)
            if not is_enqueued(t) and classify(t) not in (Outcome.RUNNING, Outcome.WAITING)]


_TRAINED_OR_COPIED = (Outcome.COMPLETED, Outcome.PRUNED, Outcome.DUPLICATE)


def pick_trial(study: optuna.Study, number: int | None = None, *, trained: bool = False,
               force: bool = False) -> FrozenTrial:
    """Trial `number`, or the best trial when None: the one picker of search.retrain (`trained`: it must
    have been trained, or copy a trained trial's result) and search.export (a rejected trial only with
    `force`). A SearchError names what is wrong."""
    trials = study.get_trials(deepcopy=False)
    if number is None and finalists_winner(study) is not None:
        number = finalists_winner(study)
    if number is None:
        best = best_trial(trials)
        if best is None:
            raise SearchError(f"study {study.study_name!r} has no completed trained trial "
                              + ("to retrain" if trained else "yet; give --trial N"))
        return best
    trial = next((t for t in trials if t.number == number), None)
    if trial is None:
        raise SearchError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    k, reason = classify(trial), rejected_reason(trial)
    if trained and (k not in _TRAINED_OR_COPIED or val_acc(trial) is None):
        why = f": {reason}" if reason else ""
        raise SearchError(f"trial {number} is {k}{why}; only a trained trial (completed, pruned, or a duplicate "
                          "of one) can be retrained")
    if TrialRecord.of(trial).genome is None:
        raise SearchError(f"trial {number} ({k}) has no genome recorded")
    if reason and not force:
        raise SearchError(f"trial {number} was rejected by the search, it breaks the rules: {reason}; "
                          "add --force to export it anyway")
    return trial


def trained_val_acc(t: FrozenTrial) -> float | None:
    """A trained trial's validation accuracy (completed, pruned, or a copy of one); None for any other."""
    if classify(t) in _TRAINED_OR_COPIED and t.values:
        return val_acc(t)
    return None


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: the ranked completed trials first, then pruned, duplicate, failed, too large
    (for the device: its reason in rejected_reason), screened, rejected.
    `pareto`: on the study's Pareto front (pareto_trials); `peak_act`: peak activations, elements per image;
    `latency_ms`: predicted by the study's latency table (blank without one); `proxy_score`, `proxy_rank`
    (1 = chosen) and `lost_to`: a --prescreen round's verdict (blank without one)."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials)
    front = {t.number for t in pareto_trials(trials)}
    rows = []
    for t in trials:
        r = TrialRecord.of(t)
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        rows.append({
            "number": t.number, "state": classify(t), "val_acc": trained_val_acc(t), "params": r.n_params,
            "macs": r.macs, "latency_ms": r.latency_ms, "peak_act": r.peak_act, "rf": r.rf, "epochs": r.epochs,
            "train_seconds": r.train_seconds, "images_per_s": r.images_per_s,
            "wall_seconds": duration, "device": r.device, "summary": r.summary,
            "preset": r.preset, **state_columns(t),
            "proxy_score": r.prescreen_score, "proxy_rank": r.prescreen_rank,
            "best": best is not None and t.number == best.number, "pareto": t.number in front,
        })
    df = pd.DataFrame(rows, columns=["number", "state", "val_acc", "params", "macs", "latency_ms", "peak_act", "rf",
                                     "epochs", "train_seconds", "images_per_s", "wall_seconds", "device", "summary",
                                     "preset",
                                     "rejected_reason", "failed_reason", "duplicate_of", "retry_of", "proxy_score",
                                     "proxy_rank", "lost_to", "best", "pareto"])
    df["proxy_score"] = df["proxy_score"].astype(float)  # NaN without a prescreen
    df["latency_ms"] = df["latency_ms"].astype(float)  # predicted (--latency-table)
    if df["latency_ms"].isna().all():  # a study without a latency table: no column that is always empty
        df = df.drop(columns="latency_ms")
    for col in ("params", "macs", "peak_act", "rf", "epochs", "duplicate_of", "retry_of", "proxy_rank",
                "lost_to"):  # ints, blank if unknown
        df[col] = df[col].astype("Int64")
    order = {k: i for i, k in enumerate(("completed", "pruned", "duplicate", "running", "waiting", "failed",
                                         "too large", "screened", "rejected"))}
    df["_k"] = df["state"].map(order)
    df["_p"] = df["params"].fillna(0)
    df = df.sort_values(["_k", "val_acc", "_p", "number"], ascending=[True, False, True, True], na_position="last")
    df = df.drop(columns=["_k", "_p"]).reset_index(drop=True)
    ranked = df["state"] == "completed"
    df.insert(0, "rank", pd.array([i + 1 if r else None for i, r in enumerate(ranked)], dtype="Int64"))
    return df
