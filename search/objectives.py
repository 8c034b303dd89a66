"""What a study optimises: validation accuracy alone (the default), or accuracy and a cost, and the
Pareto front of the trained trials.

    --objectives accuracy          one objective, maximised; pruning works
    --objectives accuracy,params   two: maximise accuracy, minimise parameters (multi-objective TPE)
    --objectives accuracy,macs     two: maximise accuracy, minimise MACs per image

The costs are analytic (space.analyze), so a trial's second value is exact and known before training;
a rejected candidate is told (0, its cost) with its constraint violations, as (0,) in a single-objective
study (the values told: search.lifecycle.objective_values). Optuna cannot prune multi-objective studies
(Trial.report raises), so they train every candidate for the whole --trial-epochs.

The Pareto front: the trained, completed, feasible trials that no other such trial beats on both higher
accuracy and lower cost (cost: the study's second objective; in a single-objective study, parameters,
as the report's accuracy-vs-parameters plot has always shown).
"""
from __future__ import annotations

from typing import Sequence

from .settings import SearchError

__all__ = ["OBJECTIVES", "COSTS", "parse_objectives", "directions", "cost_name", "pareto_front"]

OBJECTIVES = ("accuracy", "accuracy,params", "accuracy,macs")
COSTS = {"params": "parameters", "macs": "MACs per image"}


def parse_objectives(text: str) -> str:
    """The canonical objectives string ('accuracy', 'accuracy,params' or 'accuracy,macs')."""
    canon = ",".join(p.strip() for p in text.split(","))
    if canon not in OBJECTIVES:
        raise SearchError(f"unknown --objectives {text!r}; choose one of: {', '.join(OBJECTIVES)}")
    return canon


def directions(objectives: str) -> list[str]:
    return ["maximize"] + ["minimize"] * (len(objectives.split(",")) - 1)


def cost_name(objectives: str) -> str | None:
    """'params' or 'macs' for a multi-objective study, None for accuracy alone."""
    names = objectives.split(",")
    return names[1] if len(names) > 1 else None


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
