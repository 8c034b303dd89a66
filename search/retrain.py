"""`python -m search.retrain [--storage URL] --study-name NAME [--trial N] [--final-epochs E] [--out DIR]
[--final-seeds N] [--compare NAMES]`: the final step alone, and the comparison with baselines afterwards.

Retrains the study's best trial (validation accuracy; ties: fewer parameters; in a multi-objective study
the most accurate member of the Pareto front), or trial N (e.g. another member of the front: see the
`pareto` column of leaderboard.csv), from scratch on all training images, tests it once, writes
best_model.{py,pt}, best_genome.json, final.json and the report, and with the deploy extra
best_model.onnx and best_model.int8.onnx (their accuracy, size and speed in final.json and the report). For studies searched by several workers with --no-final, where exactly one process should retrain. Resumable: run it
again after a crash and it continues from the checkpoint in <out>/runs/ (search.seedrun).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from space.cli import run_cli
from train.defaults import defaults_for
from train.device import check_device
from train.files import DATA_DIR, RESULTS

from .cli import (ERRORS, add_final_args, add_study_args, locate, make_parser, open_existing, parse_compare,
                  positive_int)
from .context import FinalPlan, Run
from .data import load_study_data, search_split, store_normalisation
from .compare import check_final_seeds
from .final import retrain_and_compare, say_interrupted
from .finalists import MAX_FINALISTS
from .places import recall
from .report import write_and_list
from .settings import SearchError, defaults_text
from .study import stored_settings
from .trials import pick_trial

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.retrain", __doc__)
    add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.add_argument("--final-epochs", type=int, default=None,
                   help="epochs (default: the study's --final-epochs, as search.run stored it, else per dataset: "
                        f"{defaults_text('final_epochs')})")
    p.add_argument("--out", default=None, help="output folder (default: the study's, as search.run stored it, else "
                   "results/<study>/; with --trial N, its trial-N/ subfolder, so that the winner's files stay)")
    p.add_argument("--data-dir", default=None, help="holds cifar-10-batches-py/ (default: the study's, as search.run "
                   "stored it, else data/)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--device", default="auto")
    p.add_argument("--subset-test", type=int, default=None, help="use only this many test images (quick runs)")
    p.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no line per epoch and no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    add_final_args(p)
    args = p.parse_args(argv)
    device = str(check_device(args.device))  # before the study is opened or anything written; canonical
    positive_int("--final-epochs", args.final_epochs)
    positive_int("--subset-test", args.subset_test)
    check_final_seeds(args.final_seeds)
    positive_int("--finalists", args.finalists)
    if args.finalists > MAX_FINALISTS:
        raise SearchError(f"--finalists must lie in 1..{MAX_FINALISTS}, got {args.finalists}")
    names = parse_compare(args.compare)
    study, url = open_existing(args)
    settings = stored_settings(study)
    pick_trial(study, args.trial, trained=True)  # a bad --trial fails before the data is loaded
    epochs, epochs_from = recall(study, "final_epochs", args.final_epochs, defaults_for(settings.dataset).final_epochs)
    data_dir, data_from = recall(study, "data_dir", args.data_dir, DATA_DIR)
    out, out_from = recall(study, "out", args.out, RESULTS / study.study_name)
    out = Path(out)
    if args.trial is not None and args.out is None:  # another trial's files never replace the winner's
        out, out_from = out / f"trial-{args.trial}", f"{out_from}, its own folder for --trial {args.trial}"
    print(f"retrain plan: {epochs} epochs ({epochs_from}); data {data_dir} ({data_from}); outputs in {out}/ "
          f"({out_from})", flush=True)
    # The same training images the search split (a --subset-train of the search carries over).
    data = load_study_data(settings, data_dir, args.subset_test, download=not args.no_download)
    store_normalisation(study, data)  # a study begun before search.run stored it
    plan = FinalPlan(epochs, args.final_seeds, tuple(names), args.compare_storage, args.trial, args.finalists)
    run = Run(study, settings, data, out,
              storage=locate(args.storage, study.study_name).url, device=device, epoch_lines=not args.quiet,
              bar=not args.quiet and (args.progress or sys.stderr.isatty()), final=plan,
              split=search_split(data, settings))
    try:
        final = retrain_and_compare(run)
    except KeyboardInterrupt:
        return say_interrupted(run)
    paths = write_and_list(study, run.out, url, final)
    if args.json:
        print(json.dumps({"study": study.study_name, "trial": final["trial"], "val_acc": final["val_acc"],
                          "test_acc": final["test_acc"], "test_acc_seeds": final["seeds"]["test_accs"],
                          "compare": {r["name"]: r["mean"] for r in final["compare"][1:]}, "epochs": epochs,
                          "out": str(run.out), "paths": {k: str(v) for k, v in paths.items()}}))
    return 0


if __name__ == "__main__":
    run_cli(main, errors=ERRORS)
