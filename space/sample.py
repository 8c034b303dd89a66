"""`python -m space.sample --n N --seed S`: N genomes drawn uniformly from the search space, one JSON per line.

Drawn as the search's random start draws them (every parameter uniform, then the construction that fills a
budget share of --max-params and raises dilations toward --min-rf). Feasible and infeasible alike (filter
with `space.describe --json`); the same seed gives the same lines.
"""
from __future__ import annotations

import random
from typing import Iterator

from .analysis import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF
from .genome import Genome
from .searchspace import RandomTrial, suggest_genome
from .spec import CliParser, fail, run_cli

__all__ = ["sample_genomes", "main"]


def sample_genomes(n: int, seed: int = 0, num_classes: int = 10, max_params: int = DEFAULT_MAX_PARAMS,
                   min_rf: int = DEFAULT_MIN_RF) -> Iterator[Genome]:
    rng = random.Random(seed)
    for _ in range(n):
        yield suggest_genome(RandomTrial(rng), num_classes=num_classes, max_params=max_params, min_rf=min_rf)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m space.sample", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--n", type=int, default=10, help="how many genomes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS, help="the budget the widths fill")
    p.add_argument("--min-rf", type=int, default=DEFAULT_MIN_RF, help="the RF the dilations aim for, pixels")
    args = p.parse_args(argv)
    if args.n < 0:
        fail(f"--n must be >= 0, got {args.n}")
    if args.max_params < 1 or args.min_rf < 1:
        fail(f"--max-params and --min-rf must be positive, got {args.max_params} and {args.min_rf}")
    for genome in sample_genomes(args.n, args.seed, max_params=args.max_params, min_rf=args.min_rf):
        print(genome.to_json())
    return 0


if __name__ == "__main__":
    run_cli(main)
