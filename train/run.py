"""`python -m train.run SPEC --dataset {cifar10,digits} --epochs E`: train one architecture, report test accuracy.

Batch size, learning rate, epochs and augmentation default to the dataset's row of train.defaults; flags
override them. Trains on the full training set and evaluates the test set once, after the last epoch
(plain accuracy, and flip-TTA accuracy beside it). `--val-size N` holds N training images out instead and
also reports validation accuracy after every epoch: that is how recipes are compared without looking at
the test set. Under --out it writes metrics.json, history.csv, report.txt (per-class report and confusion
matrix), model.pt (state_dict; the EMA weights when the recipe keeps an EMA) and checkpoint.pt, and with
--onnx model.onnx and model.int8.onnx (train.deploy; their accuracy, size and speed in metrics.json); the same
command after a crash or Ctrl-C resumes from the checkpoint, and the same command after a finished run
reuses it (it says so). The default --out is results/train/<spec>-<dataset>/, so runs of different nets
never share a checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from space import analyze, check, load_spec
from space.genome import GenomeError
from space.rules import RulesError, add_rule_flags, rules_from_args
from space.cli import CliParser, fail, plural, run_cli

from .data import DATASETS, DataError, dataset_label, load_dataset, train_val_split
from .defaults import defaults_for
from .device import DeviceError, check_device
from .deploy import DEPLOY_EXTRA, DeployError, deploy
from .deploy import missing as deploy_missing
from .engine import TrainConfig, TrainError, TrainResult, resolve_device, train, tta_applies, with_overrides
from .files import DATA_DIR, RESULTS, write_json
from .report import classification_summary, confusion_text
from .testset import score_test_set

__all__ = ["main", "write_outputs", "default_out"]


def default_out(spec: str, dataset: str) -> Path:
    """results/train/<spec>-<dataset>: a preset's name, a genome file's stem, or a hash of inline JSON."""
    if spec.lstrip().startswith("{"):
        name = "genome-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    else:
        name = Path(spec).stem if Path(spec).suffix == ".json" or Path(spec).exists() else spec
    return RESULTS / "train" / f"{name}-{dataset}"


def write_outputs(out: Path, result: TrainResult, data, extra: dict, tta: bool = True) -> dict:
    """Test metrics, history and weights of a finished run under `out`; returns the metrics dict.
    test_acc is the plain figure; test_acc_tta (flip-TTA) is reported beside it, never instead, and only
    with `tta` (where training flipped the images: None otherwise)."""
    scores = score_test_set(result.model, data, result.device)
    text, per_class, cm = classification_summary(scores.labels.numpy(), scores.pred.numpy(), data.classes)
    metrics = {**extra, "status": result.status, "message": result.message, "epochs": result.epochs,
               "test_acc": scores.acc, "test_acc_tta": scores.acc_tta if tta else None, "test_loss": scores.loss,
               "train_seconds": round(result.train_seconds, 2), "images_per_s": round(result.images_per_s, 1),
               "device": result.device, "per_class": per_class, "confusion_matrix": cm.tolist()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics, indent=2)
    (out / "report.txt").write_text(f"{text}\nconfusion matrix (rows: true class)\n{confusion_text(cm, data.classes)}\n")
    with open(out / "history.csv", "w", newline="") as f:
        rows = [asdict(h) for h in result.history]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "model.pt")
    return metrics


def build_parser() -> CliParser:
    p = CliParser(prog="python -m train.run", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("spec", help="preset name or genome JSON file")
    p.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASETS)}, or the path of a folder of "
                   "class folders (optionally inside train/ and test/) or of an .npz (README: Your own images)")
    p.add_argument("--test-size", type=_size, help="a folder of class folders without test/: the test images "
                   "carved out of it, a count or a fraction (default 0.2), stratified, always the same ones")
    p.add_argument("--data-dir", default=DATA_DIR, help="holds cifar-10-batches-py/ (downloaded there if absent)")
    p.add_argument("--epochs", type=int, help="default: the dataset's final_epochs in train.defaults")
    p.add_argument("--batch-size", type=int, help="default: per dataset, train.defaults")
    p.add_argument("--lr", type=float, help="OneCycle peak learning rate (default: per dataset, scaled with the batch)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, help="flip/shift-scale-rotate/cutout "
                   "(default: per dataset)")
    p.add_argument("--augment-start", type=float, help="shift-scale-rotate and cutout probability multiplier at "
                   f"the first epoch (default: min(1, epochs / {TrainConfig.augment_full_epochs}))")
    p.add_argument("--augment-end", type=float, help="the same multiplier at the last epoch, linear in between "
                   f"(default {TrainConfig.augment_end})")
    p.add_argument("--ema-decay", type=float, help=f"per-step weight EMA decay, 0: none (default {TrainConfig.ema_decay})")
    p.add_argument("--label-smoothing", type=float, help=f"default {TrainConfig.label_smoothing}")
    p.add_argument("--weight-decay", type=float, help=f"L2 on conv and linear weights (default {TrainConfig.weight_decay})")
    p.add_argument("--warmup", type=float, help="fraction of the steps spent warming the lr up "
                   f"(default {TrainConfig.pct_start})")
    p.add_argument("--bias-lr-scale", type=float, help="peak lr multiplier of BN and bias parameters "
                   f"(default {TrainConfig.bias_lr_scale:g})")
    p.add_argument("--anneal", choices=("cos", "linear"), help="shape of the lr warm-up and decay "
                   f"(default {TrainConfig.anneal})")
    p.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, help="flip each image in alternate "
                   f"epochs instead of at random (default {TrainConfig.alternate_flip})")
    p.add_argument("--val-size", type=int, help="hold out this many training images and report validation "
                   "accuracy every epoch (for choosing a recipe; the test set is still evaluated once, at the end)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (long GPU runs)")
    p.add_argument("--subset", type=int, help="train on the first N (class-balanced) training images")
    p.add_argument("--out", default=None, help="output folder (default: results/train/<spec>-<dataset>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is not a "
                   "terminal (by default only a terminal gets one: in a log file it is a stream of \\r lines)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (fp32) and model.int8.onnx (static "
                   "int8), verified against PyTorch and evaluated with ONNX Runtime (needs the deploy extra)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_rule_flags(p)
    p.add_argument("--force", action="store_true", help="train a genome that breaks the rules (default: refuse it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = check_device(args.device)  # before any data is loaded or output written; canonical from here on
    rules, epochs = _checked(args)
    genome, data, test_data = _load(args, rules)
    out = Path(args.out) if args.out else default_out(args.spec, dataset_label(args.dataset))
    augment = defaults_for(args.dataset).augment if args.augment is None else args.augment
    config = _config(args, epochs, str(device), out, augment)
    a = analyze(genome)
    print(f"{genome.summary()}\n{a.params:,} parameters, RF {a.rf}; {data.name}: {len(data.y_train):,} train / "
          f"{len(data.y_test):,} {'validation' if args.val_size else 'test'} images; device {device}; {plural(epochs, 'epoch')}, "
          f"batch {config.batch_size}, lr {config.lr:g}; outputs in {out}/", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        result = train(genome, config, data)
    except KeyboardInterrupt:
        print(f"interrupted: the last finished epoch is in {out}/checkpoint.pt; run the same command to resume",
              file=sys.stderr)
        return 130
    if result.status == "diverged":
        fail(f"training diverged: {result.message}; try a lower --lr", code=1)
    tta = tta_applies(augment)
    held_out = {"val_size": args.val_size, "val_acc": result.val_acc,
                "val_acc_tta": result.history[-1].val_acc_tta if tta else None} if args.val_size else {}
    metrics = write_outputs(out, result, test_data, {**held_out, "spec": args.spec, "genome": genome.to_dict(), "params": a.params,
                                                "rf": a.rf, "dataset": data.name, "config": asdict(config),
                                                "wall_seconds": round(time.perf_counter() - t0, 1)}, tta=tta)
    _say_result(args, result, metrics, out, tta)
    if args.onnx:  # after the lines above, which a failed export leaves printed
        try:
            metrics["deploy"] = deploy(result.model, out / "model.onnx", test_data, metrics["test_acc"],
                                       int8_path=out / "model.int8.onnx", seed=args.seed)
        except DeployError as e:
            fail(str(e), code=1)
        write_json(out / "metrics.json", metrics, indent=2)
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}))
    return 0


def _size(text: str) -> int | float:
    """--test-size: '500' images or '0.2' of them."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of images or a fraction, got {text!r}") from None


def _checked(args: argparse.Namespace) -> tuple:
    """(rules, epochs) from the flags; one error line (space.cli.fail) for a bad one."""
    try:
        rules = rules_from_args(args)
    except RulesError as e:
        fail(str(e))
    if args.onnx and deploy_missing():
        fail(f"--onnx needs {', '.join(deploy_missing())} (the deploy extra): {DEPLOY_EXTRA}")
    d = defaults_for(args.dataset)
    epochs = d.final_epochs if args.epochs is None else args.epochs
    if epochs < 1:
        fail(f"--epochs must be a positive integer, got {epochs}")
    for flag, value, ok in (("--lr", args.lr, lambda v: v > 0), ("--weight-decay", args.weight_decay, lambda v: v >= 0),
                            ("--warmup", args.warmup, lambda v: 0 < v < 1),
                            ("--bias-lr-scale", args.bias_lr_scale, lambda v: v > 0),
                            ("--label-smoothing", args.label_smoothing, lambda v: 0 <= v < 1),
                            ("--ema-decay", args.ema_decay, lambda v: 0 <= v < 1),
                            ("--augment-start", args.augment_start, lambda v: 0 <= v <= 1),
                            ("--augment-end", args.augment_end, lambda v: 0 <= v <= 1)):
        if value is not None and not ok(value):
            fail(f"{flag} {value:g} is out of range")
    return rules, epochs


def _load(args: argparse.Namespace, rules) -> tuple:
    """(genome, the data trained on, the data whose test set is scored): with --val-size the training images
    are split and the test set is scored once at the end; a genome that breaks the rules is refused (as
    search.run rejects candidates: before anything is trained or written) unless --force."""
    genome = load_spec(args.spec)
    data = load_dataset(args.dataset, args.data_dir, test_size=args.test_size)
    if args.subset:
        data = data.subset(args.subset, None, seed=args.seed)
    test_data = data
    if args.val_size:  # train on the rest; report validation accuracy per epoch (the test set stays unseen)
        data = train_val_split(data, args.val_size, seed=args.seed)
        # the test set once at the end, normalised with the statistics of the images trained on
        test_data = replace(data, name=test_data.name, x_test=test_data.x_test, y_test=test_data.y_test)
    if genome.num_classes != data.num_classes:
        genome = replace(genome, num_classes=data.num_classes)
    violations = check(genome, rules)  # as search.run rejects candidates: before anything is trained or written
    if violations and not args.force:
        fail(f"{args.spec} breaks the rules ({rules.describe()}, a DSC and a dilated conv): {'; '.join(violations)}; "
             "give other --max-params/--min-rf/--max-macs, or --force to train it anyway")
    if violations:
        print(f"training despite the rules (--force): {'; '.join(violations)}", file=sys.stderr)
    return genome, data, test_data


def _config(args: argparse.Namespace, epochs: int, device: str, out: Path, augment: bool) -> TrainConfig:
    """The run's TrainConfig: the dataset's row of train.defaults, the recipe's defaults, the flags over both."""
    d = defaults_for(args.dataset)
    batch = args.batch_size or d.batch_size
    config = with_overrides(TrainConfig(epochs=epochs, batch_size=batch, lr=d.lr_for(batch), device=device,
                                        seed=args.seed, eval_every=1 if args.val_size else 0,
                                        checkpoint=str(out / "checkpoint.pt"), progress=not args.quiet,
                                        progress_bar=args.progress or sys.stderr.isatty(),
                                        compile=args.compile, held_out="val" if args.val_size else "test",
                                        tta=tta_applies(augment)),
                            lr=args.lr, augment_start=args.augment_start, augment_end=args.augment_end,
                            ema_decay=args.ema_decay, label_smoothing=args.label_smoothing,
                            weight_decay=args.weight_decay, pct_start=args.warmup,
                            bias_lr_scale=args.bias_lr_scale, alternate_flip=args.alternate_flip,
                            anneal=args.anneal)
    return config if augment else replace(config, augment=None)


def _say_result(args: argparse.Namespace, result: TrainResult, metrics: dict, out: Path, tta: bool) -> None:
    if result.resumed_epochs >= result.epochs:
        print(f"reused the finished run in {out}/ (checkpoint of {plural(result.epochs, 'epoch')}): nothing trained; "
              "delete it or give another --out to train again")
    elif result.resumed_epochs:
        print(f"resumed from {out}/checkpoint.pt after epoch {result.resumed_epochs}")
    shown = (lambda key: f" (flip-TTA {metrics[key]:.4f})") if tta else (lambda key: "")
    if args.val_size:
        print(f"validation accuracy {metrics['val_acc']:.4f}{shown('val_acc_tta')}")
    print(f"test accuracy {metrics['test_acc']:.4f}{shown('test_acc_tta')} after {plural(result.epochs, 'epoch')} "
          f"({metrics['train_seconds']:.0f} s training, {metrics['images_per_s']:,.0f} img/s); outputs in {out}/")


if __name__ == "__main__":
    run_cli(main, (GenomeError, DataError, TrainError, DeviceError))
