"""`python -m search.export --storage URL --study-name NAME [--trial N] -o FILE.py`: any trial as PyTorch code.

Without --trial it exports the winner (highest validation accuracy among completed trials; ties go to
fewer parameters; in a multi-objective study, among the members of the Pareto front). Any other trial,
e.g. another front member (the `pareto` column of leaderboard.csv), by --trial N. The file needs only
torch (space.export.export_code); the final retrain writes the same code as best_model.py next to
best_model.pt. Both files define MEAN and STD, the input normalisation of the study's final retrain
(stored with the study; for a study begun before it was, computed from its dataset in --data-dir).
A trial the search rejected (it breaks a rule: too many parameters or MACs, too small a receptive field,
no DSC or no dilated conv) is refused unless --force is given.

`--onnx FILE.onnx` (and `--int8`: FILE.int8.onnx beside it) exports the retrained weights of the winner (or
of --trial N) instead, from <--out>/best_model.pt and final.json of its search.retrain: fp32 ONNX verified
against PyTorch, static int8, both evaluated on the test set and timed with ONNX Runtime (train.deploy; needs
the deploy extra). A trial that has not been retrained has no weights: retrain it first.
"""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from train.deploy import DEPLOY_EXTRA, DeployError, deploy, missing
from train.engine import TrainError, load_weights
from train.files import DATA_DIR, RESULTS
from space import build
from space.export import export_code
from space.genome import Genome

from .cli import ERRORS, add_study_args, make_parser, open_existing
from .data import load_study_data, study_normalisation
from .final import load_final
from .lifecycle import rejected_reason
from .places import recall
from .settings import SearchError
from .study import stored_settings
from .trials import genome_of, pick_trial

__all__ = ["add_onnx_args", "export_retrained_onnx", "main"]


def add_onnx_args(p) -> None:
    p.add_argument("--onnx", metavar="FILE.onnx", help="write the retrained weights as fp32 ONNX (verified, evaluated "
                   "and timed with ONNX Runtime)")
    p.add_argument("--int8", action="store_true", help="with --onnx: also FILE.int8.onnx, static int8 quantization")
    p.add_argument("--out", default=None, help="with --onnx: the retrain's folder holding final.json and best_model.pt "
                   "(default: the study's, as search.run stored it, else results/<study>/)")
    p.add_argument("--data-dir", default=None, help="holds cifar-10-batches-py/: with --onnx, the calibration "
                   "and test images; for a study begun before its input normalisation was stored, MEAN and STD "
                   "(default: the study's, as search.run stored it, else data/)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")


def _retrained_here(folder: Path, study_name: str, number: int) -> bool:
    final = load_final(folder)
    return bool(final and final.get("study") == study_name and final.get("trial") == number
                and (folder / "best_model.pt").is_file())


def export_retrained_onnx(study: optuna.Study, number: int, genome: Genome, args) -> dict:
    """args.onnx (and its .int8.onnx with args.int8) from trial `number`'s retrained weights in args.out."""
    target = Path(args.onnx)
    if target.suffix != ".onnx":
        raise SearchError(f"--onnx {target}: the file name must end in .onnx")
    if missing():
        raise SearchError(f"--onnx needs {', '.join(missing())} (the deploy extra): {DEPLOY_EXTRA}")
    base = Path(recall(study, "out", args.out, RESULTS / study.study_name)[0])
    # the winner's retrain is in the study's folder, another trial's in its trial-N/ (search.retrain --trial N)
    folders = [base] if args.out else [base, base / f"trial-{number}"]
    out = next((f for f in folders if _retrained_here(f, study.study_name, number)), None)
    if out is None:
        raise SearchError(f"trial {number} of study {study.study_name!r} has no trained weights in "
                          f"{' or '.join(f'{f}/' for f in folders)} (best_model.pt and final.json); retrain it first "
                          f"(into its own folder, the winner's files stay): python -m search.retrain --study-name "
                          f"{study.study_name} --trial {number}")
    final = load_final(out)
    model = build(genome)
    try:
        model.load_state_dict(load_weights(out / "best_model.pt"))
    except TrainError as e:
        raise SearchError(str(e)) from None
    except RuntimeError as e:  # tensors of another net
        raise SearchError(f"{out / 'best_model.pt'} does not hold trial {number}'s weights "
                          f"({str(e).splitlines()[0]}); retrain it") from None
    settings = stored_settings(study)
    # the images the retrain trained and tested on (its calibration and test images)
    data_dir = recall(study, "data_dir", args.data_dir, DATA_DIR)[0]
    data = load_study_data(settings, data_dir, final.get("n_test"), download=not args.no_download)
    try:
        return deploy(model, target, data, final["test_acc"],
                      int8_path=target.with_suffix(".int8.onnx") if args.int8 else None, seed=settings.seed)
    except DeployError as e:
        raise SearchError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.export", __doc__)
    add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.add_argument("-o", "--output", help="the .py file to write")
    p.add_argument("--force", action="store_true", help="export a trial the search rejected (it breaks the rules)")
    add_onnx_args(p)
    args = p.parse_args(argv)
    if not (args.output or args.onnx):
        raise SearchError("give -o FILE.py (the code) or --onnx FILE.onnx (the retrained weights), or both")
    study, _ = open_existing(args)
    trial = pick_trial(study, args.trial, force=args.force)
    number, genome = trial.number, genome_of(trial)
    if args.onnx:
        export_retrained_onnx(study, number, genome, args)
    if not args.output:
        return 0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # MEAN and STD: what the final retrain normalises with; CLASSES: what its outputs mean
    mean, std, classes = study_normalisation(study, recall(study, "data_dir", args.data_dir, DATA_DIR)[0])
    out.write_text(export_code(genome, mean, std, classes=classes))
    print(f"wrote {out} (trial {number}: {genome.summary()})")
    reason = rejected_reason(trial)
    if reason:
        print(f"warning: trial {number} breaks the rules ({reason}); exported because of --force", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from space.cli import run_cli
    run_cli(main, errors=ERRORS)
