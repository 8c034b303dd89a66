"""`python -m space.sample --n N --seed S`: N genomes drawn uniformly from the search space, one JSON per line.

Feasible and infeasible alike (filter with `space.describe --json`); the same seed gives the same lines.
"""
from __future__ import annotations

import random
from typing import Iterator

from .genome import Genome
from .searchspace import RandomTrial, suggest_genome
from .spec import CliParser, fail, run_cli

__all__ = ["sample_genomes", "main"]


def sample_genomes(n: int, seed: int = 0, num_classes: int = 10) -> Iterator[Genome]:
    rng = random.Random(seed)
    for _ in range(n):
        yield suggest_genome(RandomTrial(rng), num_classes=num_classes)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m space.sample", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--n", type=int, default=10, help="how many genomes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 0:
        fail(f"--n must be >= 0, got {args.n}")
    for genome in sample_genomes(args.n, args.seed):
        print(genome.to_json())
    return 0


if __name__ == "__main__":
    run_cli(main)
