"""`python -m space.sample --n N --seed S [--max-macs M]`: N genomes drawn uniformly from the search space, one JSON per line.

Drawn as the search's random start draws them (every parameter uniform, then the construction that fills a
budget share of --max-params within --max-macs and raises dilations toward --min-rf). Feasible and
infeasible alike (filter with `space.describe --json`); the same seed gives the same lines. A summary goes
to stderr: the share feasible under the rules, and the median parameters and MACs of the feasible ones.
"""
from __future__ import annotations

import random
import statistics
import sys
from typing import Iterable, Iterator

from .analysis import analyze
from .genome import Genome, GenomeError
from .rules import Rules, RulesError, add_rule_flags, check, rules_from_args
from .searchspace import RandomTrial, suggest_genome
from .cli import CliParser, fail, run_cli

__all__ = ["sample_genomes", "summary", "main"]


def sample_genomes(n: int, seed: int = 0, num_classes: int = 10, rules: Rules = Rules()) -> Iterator[Genome]:
    rng = random.Random(seed)
    for _ in range(n):
        yield suggest_genome(RandomTrial(rng), num_classes=num_classes, rules=rules)


def summary(genomes: Iterable[Genome], rules: Rules = Rules()) -> dict[str, float | int | None]:
    """n, feasible (share under `rules`), and the median params and MACs per image of the feasible ones."""
    genomes = list(genomes)
    feasible = [analyze(g) for g in genomes if not check(g, rules)]
    return {"n": len(genomes), "feasible": len(feasible) / len(genomes) if genomes else 0.0,
            "median_params": statistics.median(a.params for a in feasible) if feasible else None,
            "median_macs": statistics.median(a.macs for a in feasible) if feasible else None}


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m space.sample", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--n", type=int, default=10, help="how many genomes")
    p.add_argument("--seed", type=int, default=0)
    add_rule_flags(p)
    args = p.parse_args(argv)
    if args.n < 0:
        fail(f"--n must be >= 0, got {args.n}")
    rules = rules_from_args(args)
    genomes = []
    for genome in sample_genomes(args.n, args.seed, rules=rules):
        print(genome.to_json())
        genomes.append(genome)
    if genomes:
        s = summary(genomes, rules)
        medians = (f"; of those, median {s['median_params']:,.0f} parameters, {s['median_macs'] / 1e6:.1f} M MACs "
                   "per image" if s["median_params"] is not None else "")
        print(f"{s['n']} genomes, {100 * s['feasible']:.1f} % feasible under {rules.describe()}, DSC and dilation"
              f"{medians}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, (GenomeError, RulesError))
