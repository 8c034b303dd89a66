"""`python -m search.export --storage URL --study-name NAME [--trial N] -o FILE.py`: any trial as PyTorch code.

Without --trial it exports the winner (highest validation accuracy among completed trials; ties go to
fewer parameters; in a multi-objective study, among the members of the Pareto front). Any other trial,
e.g. another front member (the `pareto` column of leaderboard.csv), by --trial N. The file needs only
torch (space.export.export_code); the final retrain writes the same code as best_model.py next to
best_model.pt, plus the input normalisation it was trained with. A trial the search rejected (it breaks a
rule: too many parameters or MACs, too small a receptive field, no DSC or no dilated conv) is refused unless
--force is given.
"""
from __future__ import annotations

import sys
from pathlib import Path

from space.export import export_code

from .cli import ERRORS, add_study_args, make_parser, open_existing
from .lifecycle import rejected_reason
from .trials import genome_of, pick_trial

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.export", __doc__)
    add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.add_argument("-o", "--output", required=True, help="the .py file to write")
    p.add_argument("--force", action="store_true", help="export a trial the search rejected (it breaks the rules)")
    args = p.parse_args(argv)
    study, _ = open_existing(args)
    trial = pick_trial(study, args.trial, force=args.force)
    number, genome = trial.number, genome_of(trial)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(export_code(genome))
    print(f"wrote {out} (trial {number}: {genome.summary()})")
    reason = rejected_reason(trial)
    if reason:
        print(f"warning: trial {number} breaks the rules ({reason}); exported because of --force", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from space.spec import run_cli
    run_cli(main, errors=ERRORS)
