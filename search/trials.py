"""Reading a study's trials: what became of each candidate, the counts, the winner, the leaderboard.

Every candidate the sampler proposes is one Optuna trial, and ends as one of these kinds:
    completed  trained for all --trial-epochs (COMPLETE); value = final validation accuracy (in a
               multi-objective study: values = [accuracy, cost], see search.objectives)
    pruned     trained, stopped early by the pruner (PRUNED); value = last validation accuracy
    rejected   broke a rule, never trained (COMPLETE with placeholder value 0 and constraints > 0,
               so TPE learns the infeasible region; Optuna's best_trial ignores it)
    duplicate  the same genome as an earlier trained trial: its result is copied, not retrained
    screened   feasible, but another proposal of its --prescreen round scored higher on the proxy: never
               trained (FAIL, with prescreen_lost_to = the winner; see search.prescreen for why FAIL)
    failed     training raised or diverged, or its worker died or was interrupted (FAIL)
    running / waiting  in progress / enqueued
"Trained" = completed + pruned: what --trials N counts.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from space import Genome

from .objectives import pareto_front

__all__ = ["KINDS", "HOLDS_PLACE", "kind", "Counts", "count", "best_trial", "pareto_trials", "val_acc", "genome_of", "is_enqueued",
           "rejected_fraction", "leaderboard"]

KINDS = ("completed", "pruned", "rejected", "duplicate", "screened", "failed", "running", "waiting")
# The phases (user attr) of a RUNNING trial that holds one of the --trials places: in training, or reserved by
# the first proposal of a --prescreen round for the round's winner (search.runner).
HOLDS_PLACE = ("training", "reserved")


def kind(t: FrozenTrial) -> str:
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.state == TrialState.RUNNING:
        return "running"
    a = t.user_attrs
    if "rejected" in a:
        return "rejected"
    if "duplicate_of" in a:
        return "duplicate"
    if "prescreen_lost_to" in a:
        return "screened"
    if t.state == TrialState.COMPLETE and a.get("trained"):
        return "completed"
    if t.state == TrialState.PRUNED and a.get("trained"):
        return "pruned"
    return "failed"


@dataclass
class Counts:
    completed: int = 0
    pruned: int = 0
    rejected: int = 0
    duplicate: int = 0
    screened: int = 0  # proposals a --prescreen round did not choose
    failed: int = 0
    running: int = 0  # holding a place right now (HOLDS_PLACE): other workers, or an unreaped dead one
    waiting: int = 0
    epochs: int = 0  # epochs trained over all trained trials

    @property
    def trained(self) -> int:
        return self.completed + self.pruned

    def as_dict(self) -> dict[str, int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "trained": self.trained}

    def line(self) -> str:
        return (f"{self.trained} trained ({self.completed} completed, {self.pruned} pruned), {self.rejected} rejected, "
                f"{self.duplicate} duplicate, " + (f"{self.screened} screened out, " if self.screened else "")
                + f"{self.failed} failed")


def count(trials: Iterable[FrozenTrial]) -> Counts:
    c = Counts()
    for t in trials:
        k = kind(t)
        if k == "running" and t.user_attrs.get("phase") not in HOLDS_PLACE:
            continue  # asked, not (yet) holding a place: it may still be rejected or screened out
        setattr(c, k, getattr(c, k) + 1)
        if k in ("completed", "pruned"):
            c.epochs += int(t.user_attrs.get("epochs", 0))
    return c


def genome_of(t: FrozenTrial) -> Genome:
    return Genome.from_json(t.user_attrs["genome"])


def val_acc(t: FrozenTrial) -> float | None:
    """The validation accuracy a trial was told with (the first objective), None if it has none."""
    return float(t.values[0]) if t.values else None


def _feasible_completed(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if kind(t) == "completed" and t.values and all(v <= 0 for v in t.constraints.values())]


def pareto_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The Pareto front (search.objectives) of the trained, completed, feasible trials, by cost: in a
    multi-objective study over its [accuracy, cost] values, otherwise over accuracy and parameters."""
    done = _feasible_completed(trials)
    cost = [float(t.values[1]) if len(t.values) > 1 else float(t.user_attrs.get("n_params", 0)) for t in done]
    return [done[i] for i in pareto_front(cost, [val_acc(t) for t in done])]


def best_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """Highest validation accuracy among trained, feasible, COMPLETE trials; ties: fewer parameters, then
    the earlier trial. Pruned trials are out: their accuracy after fewer epochs is not comparable.
    In a multi-objective study the winner is chosen the same way among the members of the Pareto front,
    so that it is one (an equally accurate trial with a lower cost beats one with fewer parameters)."""
    trials = list(trials)
    done = _feasible_completed(trials)
    if done and len(done[0].values) > 1:
        done = pareto_trials(done)
    if not done:
        return None
    return max(done, key=lambda t: (val_acc(t), -int(t.user_attrs.get("n_params", 0)), -t.number))


def is_enqueued(t: FrozenTrial) -> bool:
    """A preset or a retry: chosen by us, not by the sampler."""
    return "preset" in t.user_attrs or "retry_of" in t.user_attrs


def rejected_fraction(trials: Iterable[FrozenTrial]) -> list[bool]:
    """For every candidate the sampler proposed, in order: was it rejected?"""
    return [kind(t) == "rejected" for t in sorted(trials, key=lambda t: t.number)
            if not is_enqueued(t) and kind(t) not in ("running", "waiting")]


def _val_acc(t: FrozenTrial) -> float | None:
    k = kind(t)
    if k in ("completed", "pruned", "duplicate") and t.values:
        return val_acc(t)
    return None


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: the ranked completed trials first, then pruned, duplicate, failed, screened, rejected.
    `pareto`: on the study's Pareto front (pareto_trials); `peak_act`: peak activations, elements per image;
    `proxy_score`, `proxy_rank` (1 = chosen) and `lost_to`: a --prescreen round's verdict (blank without one)."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(trials)
    front = {t.number for t in pareto_trials(trials)}
    rows = []
    for t in trials:
        a, k = t.user_attrs, kind(t)
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        rows.append({
            "number": t.number, "state": k, "val_acc": _val_acc(t), "params": a.get("n_params"),
            "macs": a.get("macs"), "peak_act": a.get("peak_act"), "rf": a.get("rf"), "epochs": a.get("epochs"),
            "train_seconds": a.get("train_seconds"), "images_per_s": a.get("images_per_s"),
            "wall_seconds": duration, "device": a.get("device"), "summary": a.get("summary"),
            "preset": a.get("preset"), "rejected_reason": a.get("rejected"),
            "failed_reason": a.get("failed_reason") if k == "failed" else None,
            "duplicate_of": a.get("duplicate_of"), "retry_of": a.get("retry_of"),
            "proxy_score": a.get("prescreen_score"), "proxy_rank": a.get("prescreen_rank"),
            "lost_to": a.get("prescreen_lost_to"), "best": best is not None and t.number == best.number, "pareto": t.number in front,
        })
    df = pd.DataFrame(rows, columns=["number", "state", "val_acc", "params", "macs", "peak_act", "rf", "epochs",
                                     "train_seconds", "images_per_s", "wall_seconds", "device", "summary", "preset",
                                     "rejected_reason", "failed_reason", "duplicate_of", "retry_of", "proxy_score",
                                     "proxy_rank", "lost_to", "best", "pareto"])
    df["proxy_score"] = df["proxy_score"].astype(float)  # NaN without a prescreen
    for col in ("params", "macs", "peak_act", "rf", "epochs", "duplicate_of", "retry_of", "proxy_rank",
                "lost_to"):  # ints, blank if unknown
        df[col] = df[col].astype("Int64")
    order = {k: i for i, k in enumerate(("completed", "pruned", "duplicate", "running", "waiting", "failed",
                                         "screened", "rejected"))}
    df["_k"] = df["state"].map(order)
    df["_p"] = df["params"].fillna(0)
    df = df.sort_values(["_k", "val_acc", "_p", "number"], ascending=[True, False, True, True], na_position="last")
    df = df.drop(columns=["_k", "_p"]).reset_index(drop=True)
    ranked = df["state"] == "completed"
    df.insert(0, "rank", pd.array([i + 1 if r else None for i, r in enumerate(ranked)], dtype="Int64"))
    return df
