"""`python -m search.retrain [--storage URL] --study-name NAME [--trial N] [--final-epochs E] [--out DIR]
[--final-seeds N] [--compare NAMES]`: the final step alone, and the comparison with baselines afterwards.

Retrains the study's best trial (validation accuracy; ties: fewer parameters; in a multi-objective study
the most accurate member of the Pareto front), or trial N (e.g. another member of the front: see the
`pareto` column of leaderboard.csv), from scratch on all training images, tests it once, writes
best_model.{py,pt}, best_genome.json, final.json and the report, and with the deploy extra
best_model.onnx and best_model.int8.onnx (their accuracy, size and speed in final.json and the report). For studies searched by several workers with --no-final, where exactly one process should retrain. Resumable: run it
again after a crash and it continues from <out>/final_checkpoint.pt.
"""
from __future__ import annotations

import json
from pathlib import Path

from train.files import DATA_DIR, RESULTS
from train.device import check_device

from .cli import ERRORS, add_final_args, add_study_args, make_parser, open_existing, parse_compare, positive_int
from .settings import DEFAULTS, defaults_text

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.retrain", __doc__)
    add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.add_argument("--final-epochs", type=int, default=None,
                   help=f"epochs (default per dataset: {defaults_text('final_epochs')})")
    p.add_argument("--out", default=None, help="output folder (default: results/<study>/)")
    p.add_argument("--data-dir", default=DATA_DIR, help="holds cifar-10-batches-py/")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--device", default="auto")
    p.add_argument("--subset-test", type=int, default=None, help="use only this many test images (quick runs)")
    p.add_argument("--progress", action="store_true", help="progress bar and per-epoch lines")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    add_final_args(p)
    args = p.parse_args(argv)
    device = str(check_device(args.device))  # before the study is opened or anything written; canonical
    positive_int("--final-epochs", args.final_epochs)
    positive_int("--subset-test", args.subset_test)
    positive_int("--final-seeds", args.final_seeds)
    names = parse_compare(args.compare)
    study, url = open_existing(args)

    from .data import load_full, store_normalisation
    from .final import retrain_and_compare
    from .storage import open_storage
    from .report import write_and_list
    from .study import stored_settings
    from .trials import pick_trial

    settings = stored_settings(study)
    pick_trial(study, args.trial, trained=True)  # a bad --trial fails before the data is loaded
    epochs = args.final_epochs or DEFAULTS[settings.dataset].final_epochs
    out = Path(args.out) if args.out else RESULTS / study.study_name
    # The same training images the search split (a --subset-train of the search carries over).
    data = load_full(settings.dataset, args.data_dir, settings.subset_train, args.subset_test, settings.seed,
                     download=not args.no_download)
    store_normalisation(study, data)  # a study begun before search.run stored it
    final = retrain_and_compare(study, settings, data, out, epochs, device, args.progress, trial_number=args.trial,
                                seeds=args.final_seeds, compare=names,
                                other_storage=lambda: open_storage(_compare_url(args, study.study_name), create=False))
    paths = write_and_list(study, out, url, final)
    if args.json:
        print(json.dumps({"study": study.study_name, "trial": final["trial"], "val_acc": final["val_acc"],
                          "test_acc": final["test_acc"], "test_acc_seeds": final["seeds"]["test_accs"],
                          "compare": {r["name"]: r["mean"] for r in final["compare"][1:]}, "epochs": epochs, "out": str(out),
                          "paths": {k: str(v) for k, v in paths.items()}}))
    return 0


def _compare_url(args, name: str) -> str:
    """--compare-storage, else this study's own storage (unredacted: it is opened, never printed)."""
    from .cli import locate
    from .storage import resolve_url

    return resolve_url(args.compare_storage, "") if args.compare_storage else locate(args.storage, name).url


if __name__ == "__main__":
    from space.cli import run_cli
    run_cli(main, errors=ERRORS)
