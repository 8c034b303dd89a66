"""Before any training: can some genome of the space meet the rules at all, and how often does a uniform
draw break them (the baseline TPE should beat). The rules as Optuna constraints: space.constraint_values.
"""
from __future__ import annotations

import random

from space import CONSTRUCTION_VERSION, Rules, analyze, check, suggest_genome
from space.searchspace import RandomTrial

from .settings import SearchError

__all__ = ["check_satisfiable", "random_rejection_rate"]


def check_satisfiable(rules: Rules, num_classes: int = 10, probes: int = 500, seed: int = 0) -> None:
    """SearchError, before any training, if no probed genome meets the constraints.

    The probes are uniform samples of the space, whose construction fills each one's budget fraction of
    max_params within max_macs (a shape too large even at its cheapest comes out at its narrowest widths, so
    the fewest parameters and MACs are probed too) and raises dilations to reach min_rf. Fast: analysis is
    analytic.
    """
    max_params, min_rf, max_macs = rules.max_params, rules.min_rf, rules.max_macs
    rng = random.Random(seed)
    fewest, widest_rf = None, 0  # fewest params among nets meeting the RF and op rules; largest RF in budget
    fewest_macs = None  # fewest MACs per image among nets meeting the RF and op rules
    for _ in range(probes):
        genome = suggest_genome(RandomTrial(rng), num_classes=num_classes, rules=rules)
        if not check(genome, rules):
            return
        a = analyze(genome)
        ops_ok = any(l.separable for l in genome.layers) and any(l.dilated for l in genome.layers)
        if ops_ok and a.rf >= min_rf:
            fewest = a.params if fewest is None else min(fewest, a.params)
            fewest_macs = a.macs if fewest_macs is None else min(fewest_macs, a.macs)
        if ops_ok and a.params <= max_params:
            widest_rf = max(widest_rf, a.rf)
    found = (f"the fewest parameters with RF >= {min_rf} is {fewest:,}" if fewest is not None
             else f"none reaches RF {min_rf}")
    if max_macs is not None and fewest_macs is not None:
        found += f", the fewest MACs {fewest_macs:,}"
    macs = f", --max-macs {max_macs:,}" if max_macs is not None else ""
    raise SearchError(f"no genome of the search space meets --max-params {max_params:,}{macs} and --min-rf {min_rf} "
                      f"({probes} genomes probed: {found}; the largest RF within {max_params:,} parameters "
                      f"is {widest_rf or 'none'}); relax the constraints")


def random_rejection_rate(rules: Rules, probes: int = 500, seed: int = 0,
                          construction: int = CONSTRUCTION_VERSION) -> float:
    """The fraction of uniformly drawn genomes that break the rules: the baseline TPE should beat."""
    rng = random.Random(seed)
    return sum(bool(check(suggest_genome(RandomTrial(rng), rules=rules, version=construction), rules))
               for _ in range(probes)) / probes
