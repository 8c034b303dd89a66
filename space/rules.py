"""The rules a genome must meet, as one frozen value: the construction (space.searchspace), the check, and
every command that takes them as flags (--max-params, --min-rf, --max-macs) share it.

Besides these three numbers every net needs at least one depthwise-separable and one dilated conv; those
two are fixed, not settings.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from .analysis import analyze
from .genome import Genome
from .latency import LatencyError, LatencyTable, load_table, predict_latency
from .machine import checked_table

__all__ = ["Rules", "RulesError", "check", "constraint_values", "add_rule_flags", "rules_from_args", "DEFAULT_MAX_PARAMS", "DEFAULT_MIN_RF"]

DEFAULT_MAX_PARAMS = 200_000
DEFAULT_MIN_RF = 44  # input pixels


class RulesError(ValueError):
    """Rules that cannot be (a value that is not a positive integer); the message is one line."""


@dataclass(frozen=True)
class Rules:
    max_params: int = DEFAULT_MAX_PARAMS  # trainable parameters (as torchsummary counts them)
    min_rf: int = DEFAULT_MIN_RF  # receptive field, input pixels
    max_macs: int | None = None  # multiply-accumulates per image; None: no limit
    # predicted milliseconds per image (batch 1) on the target of `latency` (space.latency); None: no limit
    max_latency_ms: float | None = None
    latency: LatencyTable | None = None  # the target's table: predicts for max_latency_ms and the latency objective

    def __post_init__(self) -> None:
        if self.max_latency_ms is not None:
            value = self.max_latency_ms
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise RulesError(f"max_latency_ms must be a positive number, got {value!r}")
            if self.latency is None:
                raise RulesError("a latency budget needs a latency table (--latency-table FILE)")
        for name in ("max_params", "min_rf", "max_macs"):
            value = getattr(self, name)
            if name == "max_macs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RulesError(f"{name} must be a positive integer, got {value!r}")

    def describe(self) -> str:
        """The rules in words, e.g. '<= 200,000 parameters, <= 20,000,000 MACs per image, RF >= 44'."""
        macs = f"<= {self.max_macs:,} MACs per image, " if self.max_macs is not None else ""
        latency = (f"<= {self.max_latency_ms:g} ms per image predicted for {self.latency.runtime}, "
                   if self.max_latency_ms is not None else "")
        return f"<= {self.max_params:,} parameters, {macs}{latency}RF >= {self.min_rf}"


def check(genome: Genome, rules: Rules | None = None, *, max_params: int | None = None, min_rf: int | None = None,
          max_macs: int | None = None) -> list[str]:
    """Readable violations of the rules; an empty list means the genome is feasible.

    `rules` defaults to Rules(); the keywords override single fields of it (check(g, max_params=10**6))."""
    rules = rules or Rules()
    given = {k: v for k, v in (("max_params", max_params), ("min_rf", min_rf), ("max_macs", max_macs)) if v is not None}
    if given:
        rules = replace(rules, **given)
    a = analyze(genome)
    violations = []
    if a.params > rules.max_params:
        violations.append(f"{a.params:,} parameters > {rules.max_params:,}")
    if rules.max_macs is not None and a.macs > rules.max_macs:
        violations.append(f"{a.macs:,} MACs > {rules.max_macs:,}")
    if rules.max_latency_ms is not None:
        ms = predict_latency(genome, rules.latency).ms
        if ms > rules.max_latency_ms:
            violations.append(f"predicted {ms:.3f} ms > {rules.max_latency_ms:g} ms ({rules.latency.runtime})")
    if a.rf < rules.min_rf:
        violations.append(f"RF {a.rf} < {rules.min_rf}")
    if not any(l.separable for l in genome.layers):
        violations.append("no depthwise-separable conv")
    if not any(l.dilated for l in genome.layers):
        violations.append("no dilated conv")
    return violations


def constraint_values(genome: Genome, rules: Rules) -> dict[str, float]:
    """The rules as Optuna constraint values: each <= 0 when met and growing with the violation, so that TPE
    (which ranks infeasible trials by their summed violation) learns which way feasibility lies.

        params    parameters / max_params - 1          (0.25: a quarter over the budget)
        rf        (min_rf - rf) / min_rf               (0.1: the receptive field is 10 % short)
        dsc       1 if the net has no depthwise-separable conv, else 0
        dilation  1 if the net has no dilated conv, else 0
        macs      MACs / max_macs - 1                  (only with max_macs: the same keys for every trial
                                                        of a study, whose rules are fixed)
        latency   predicted ms / max_latency_ms - 1    (only with max_latency_ms)
    """
    a = analyze(genome)
    values = {
        "params": a.params / rules.max_params - 1.0,
        "rf": (rules.min_rf - a.rf) / rules.min_rf,
        "dsc": 0.0 if any(l.separable for l in genome.layers) else 1.0,
        "dilation": 0.0 if any(l.dilated for l in genome.layers) else 1.0,
    }
    if rules.max_macs is not None:
        values["macs"] = a.macs / rules.max_macs - 1.0
    if rules.max_latency_ms is not None:
        values["latency"] = predict_latency(genome, rules.latency).ms / rules.max_latency_ms - 1.0
    return values


def add_rule_flags(parser: argparse.ArgumentParser) -> None:
    """--max-params, --min-rf, --max-macs, --latency-table, --max-latency-ms and --latency-rescale, as search.run
    takes them."""
    parser.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS,
                        help=f"parameter budget (default {DEFAULT_MAX_PARAMS:,})")
    parser.add_argument("--min-rf", type=int, default=DEFAULT_MIN_RF,
                        help=f"smallest receptive field, pixels (default {DEFAULT_MIN_RF})")
    parser.add_argument("--max-macs", type=int, default=None,
                        help="multiply-accumulates per image (default: no limit)")
    parser.add_argument("--latency-table", default=None, metavar="FILE",
                        help="a latency table of the target (python -m train.latency build): predicted ms per layer")
    parser.add_argument("--max-latency-ms", type=float, default=None,
                        help="predicted milliseconds per image on the table's target (default: no limit)")
    parser.add_argument("--latency-rescale", action="store_true",
                        help="scale the table's predictions by how much slower or faster its reference blocks run "
                             "here than where it was built (space.machine; needs the table's runtime here)")


def rules_from_args(args: argparse.Namespace) -> Rules:
    """The Rules of add_rule_flags' flags; RulesError (one line, naming the flag) if one is not positive."""
    for flag in ("max_params", "min_rf", "max_macs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RulesError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    table = None
    if getattr(args, "latency_table", None):
        try:  # the table checked against this machine's speed (a warning: line if it differs; space.machine)
            table, _ = checked_table(load_table(args.latency_table), getattr(args, "latency_rescale", False))
        except LatencyError as e:
            raise RulesError(str(e)) from None
    if getattr(args, "max_latency_ms", None) is not None and table is None:
        raise RulesError("--max-latency-ms needs --latency-table FILE (the target's table)")
    if getattr(args, "latency_rescale", False) and table is None:
        raise RulesError("--latency-rescale needs --latency-table FILE (the table to rescale)")
    return Rules(args.max_params, args.min_rf, args.max_macs, getattr(args, "max_latency_ms", None), table)
