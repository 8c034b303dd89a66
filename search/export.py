"""`python -m search.export --storage URL --study-name NAME [--trial N] -o FILE.py`: any trial as PyTorch code.

Without --trial it exports the winner (highest validation accuracy among completed trials; ties go to
fewer parameters; in a multi-objective study, among the members of the Pareto front). Any other trial,
e.g. another front member (the `pareto` column of leaderboard.csv), by --trial N. The file needs only
torch (space.export.export_code); the final retrain writes the same code as best_model.py next to
best_model.pt. Both files define MEAN and STD, the input normalisation of the study's final retrain
(stored with the study; for a study begun before it was, computed from its dataset in --data-dir).
A trial the search rejected (it breaks a rule: too many parameters or MACs, too small a receptive field,
no DSC or no dilated conv) is refused unless --force is given.
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from space.export import export_code
from space.genome import Genome

from .cli import ERRORS, add_study_args, make_parser, open_existing
from .data import study_normalisation
from .settings import SearchError
from .trials import best_trial, genome_of, kind

__all__ = ["trial_genome", "main"]


def trial_genome(study: optuna.Study, number: int | None, force: bool = False) -> tuple[int, Genome]:
    """(trial number, genome) of trial `number`, or of the best trial when None; a rejected trial only with
    `force`."""
    trials = study.get_trials(deepcopy=False)
    if number is None:
        best = best_trial(trials)
        if best is None:
            raise SearchError(f"study {study.study_name!r} has no completed trained trial yet; give --trial N")
        return best.number, genome_of(best)
    match = [t for t in trials if t.number == number]
    if not match:
        raise SearchError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    if "genome" not in match[0].user_attrs:
        raise SearchError(f"trial {number} ({kind(match[0])}) has no genome recorded")
    reason = match[0].user_attrs.get("rejected")
    if reason and not force:
        raise SearchError(f"trial {number} was rejected by the search, it breaks the rules: {reason}; "
                          "add --force to export it anyway")
    return number, genome_of(match[0])


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.export", __doc__)
    add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.add_argument("-o", "--output", required=True, help="the .py file to write")
    p.add_argument("--force", action="store_true", help="export a trial the search rejected (it breaks the rules)")
    p.add_argument("--data-dir", default="data", help="only for a study begun before the input normalisation was "
                   "stored: the folder holding its dataset (cifar10), to compute MEAN and STD from")
    args = p.parse_args(argv)
    study, _ = open_existing(args)
    number, genome = trial_genome(study, args.trial, args.force)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    mean, std = study_normalisation(study, args.data_dir)  # MEAN and STD: what the final retrain normalises with
    out.write_text(export_code(genome, mean, std))
    print(f"wrote {out} (trial {number}: {genome.summary()})")
    reason = study.trials[number].user_attrs.get("rejected") if args.trial is not None else None
    if reason:
        print(f"warning: trial {number} breaks the rules ({reason}); exported because of --force", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from space.spec import run_cli
    run_cli(main, errors=ERRORS)
