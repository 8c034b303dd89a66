"""`python -m train.run SPEC --dataset {cifar10,digits} --epochs E`: train one architecture, report test accuracy.

Trains on the full training set (no validation split: nothing is selected here) and evaluates the test
set once, after the last epoch. Under --out it writes metrics.json, history.csv, report.txt (per-class
report and confusion matrix), model.pt (state_dict) and checkpoint.pt; the same command after a crash or
Ctrl-C resumes from the checkpoint, and the same command after a finished run reuses it (it says so).
The default --out is results/train/<spec>-<dataset>/, so runs of different nets never share a checkpoint.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from space import analyze, load_spec
from space.genome import GenomeError
from space.spec import CliParser, fail, run_cli

from .data import DATASETS, DataError, load_dataset
from .engine import TrainConfig, TrainError, TrainResult, predict_images, resolve_device, train, with_overrides
from .report import classification_summary, confusion_text

__all__ = ["main", "write_outputs", "default_out"]


def default_out(spec: str, dataset: str) -> Path:
    """results/train/<spec>-<dataset>: a preset's name, a genome file's stem, or a hash of inline JSON."""
    if spec.lstrip().startswith("{"):
        name = "genome-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    else:
        name = Path(spec).stem if Path(spec).suffix == ".json" or Path(spec).exists() else spec
    return Path("results") / "train" / f"{name}-{dataset}"


def write_outputs(out: Path, result: TrainResult, data, extra: dict) -> dict:
    """Test metrics, history and weights of a finished run under `out`; returns the metrics dict."""
    logits, labels, loss = predict_images(result.model, data.x_test, data.y_test, data.mean, data.std, result.device)
    pred = logits.argmax(1).numpy()
    text, per_class, cm = classification_summary(labels.numpy(), pred, data.classes)
    metrics = {**extra, "status": result.status, "message": result.message, "epochs": result.epochs,
               "test_acc": float((pred == labels.numpy()).mean()), "test_loss": loss,
               "train_seconds": round(result.train_seconds, 2), "images_per_s": round(result.images_per_s, 1),
               "device": result.device, "per_class": per_class, "confusion_matrix": cm.tolist()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.txt").write_text(f"{text}\nconfusion matrix (rows: true class)\n{confusion_text(cm, data.classes)}\n")
    with open(out / "history.csv", "w", newline="") as f:
        rows = [asdict(h) for h in result.history]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "model.pt")
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m train.run", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("spec", help="preset name or genome JSON file")
    p.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default="data", help="holds cifar-10-batches-py/ (downloaded there if absent)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="OneCycle peak learning rate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (long GPU runs)")
    p.add_argument("--subset", type=int, help="train on the first N (class-balanced) training images")
    p.add_argument("--out", default=None, help="output folder (default: results/train/<spec>-<dataset>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.epochs < 1:
        fail(f"--epochs must be a positive integer, got {args.epochs}")
    genome = load_spec(args.spec)
    data = load_dataset(args.dataset, args.data_dir)
    if args.subset:
        data = data.subset(args.subset, None, seed=args.seed)
    if genome.num_classes != data.num_classes:
        genome = replace(genome, num_classes=data.num_classes)
    out = Path(args.out) if args.out else default_out(args.spec, data.name)
    device = resolve_device(args.device)
    config = with_overrides(TrainConfig(epochs=args.epochs, device=str(device), seed=args.seed, eval_every=0,
                                        checkpoint=str(out / "checkpoint.pt"), progress=not args.quiet,
                                        compile=args.compile, held_out="test"),
                            batch_size=args.batch_size, lr=args.lr)
    a = analyze(genome)
    print(f"{genome.summary()}\n{a.params:,} parameters, RF {a.rf}; {data.name}: {len(data.y_train):,} train / "
          f"{len(data.y_test):,} test images; device {device}; {args.epochs} epochs; outputs in {out}/", file=sys.stderr)
    t0 = time.perf_counter()
    result = train(genome, config, data)
    if result.status == "diverged":
        fail(f"training diverged: {result.message}; try a lower --lr", code=1)
    metrics = write_outputs(out, result, data, {"spec": args.spec, "genome": genome.to_dict(), "params": a.params,
                                                "rf": a.rf, "dataset": data.name, "config": asdict(config),
                                                "wall_seconds": round(time.perf_counter() - t0, 1)})
    if result.resumed_epochs >= result.epochs:
        print(f"reused the finished run in {out}/ (checkpoint of {result.epochs} epochs): nothing trained; "
              "delete it or give another --out to train again")
    elif result.resumed_epochs:
        print(f"resumed from {out}/checkpoint.pt after epoch {result.resumed_epochs}")
    print(f"test accuracy {metrics['test_acc']:.4f} after {result.epochs} epochs "
          f"({metrics['train_seconds']:.0f} s training, {metrics['images_per_s']:,.0f} img/s); outputs in {out}/")
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}))
    return 0


if __name__ == "__main__":
    run_cli(main, (GenomeError, DataError, TrainError))
