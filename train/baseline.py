"""The plain seed-style training loop, kept as the benchmark baseline: `python -m train.baseline SPEC ...`.

What the seed notebooks did: a torch DataLoader with 2 workers running the albumentations pipeline image
by image, NCHW float32 batches of 128, SGD with momentum, OneCycle (peak 0.1, starting at a tenth of it),
plain cross-entropy. train.bench measures its throughput in the same run as the project's pipeline;
`--epochs E` trains with it instead and reports accuracy (`--val-size N`: on N held-out training images
after every epoch, and on the test set once at the end), the reference for results/benchmarks/recipe/recipe_cpu.md.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from space import build, load_spec
from space.cli import CliParser

from .files import DATA_DIR
from .augment import AugmentConfig
from .data import load_dataset, train_val_split
from .device import check_device, synchronize
from .engine import evaluate
from .loader import make_dataloader

__all__ = ["seed_loop_throughput", "train_seed_style", "main"]


def _seed_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, xb: torch.Tensor,
               yb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One step of the seeds' loop: copy the batch over, forward, backward, SGD step; returns the loss."""
    xb, yb = xb.to(device), yb.to(device)
    optimizer.zero_grad()
    loss = criterion(model(xb), yb)
    loss.backward()
    optimizer.step()
    return loss


def seed_loop_throughput(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                         seconds: float = 20.0, batch_size: int = 128, workers: int = 2,
                         device: torch.device | str = "cpu", warmup_batches: int = 5) -> float:
    """Training images per second of the seed-style loop, timed after `warmup_batches` (workers started)."""
    device = torch.device(device)
    model = model.to(device).train()
    loader = make_dataloader(x, y, mean, std, batch_size, train=True, augment=AugmentConfig(), workers=workers,
                             device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    seen, start, step = 0, None, 0
    while True:
        for xb, yb in loader:
            _seed_step(model, optimizer, criterion, xb, yb, device)
            step += 1
            if step == warmup_batches:
                synchronize(device)
                start = time.perf_counter()
            elif start is not None:
                seen += len(yb)
                if time.perf_counter() - start >= seconds:
                    synchronize(device)
                    return seen / (time.perf_counter() - start)


def train_seed_style(model: nn.Module, data, epochs: int, batch_size: int = 128, lr: float = 0.1,
                     momentum: float = 0.9, weight_decay: float = 5e-4, workers: int = 2, seed: int = 0,
                     device: torch.device | str = "cpu", log=print) -> list[dict]:
    """Train the seed notebooks' way on data's training part; per epoch {epoch, train_loss, held_out_acc, seconds}
    where held_out_acc is the accuracy on data's held-out part (the validation split, or the test set)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = model.to(device)
    loader = make_dataloader(data.x_train, data.y_train, data.mean, data.std, batch_size, train=True,
                             augment=AugmentConfig(), workers=workers, seed=seed, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader),
                                                    div_factor=10.0)
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for xb, yb in loader:
            loss = _seed_step(model, optimizer, criterion, xb, yb, device)
            scheduler.step()
            loss_sum += float(loss.detach()) * len(yb)  # the seeds' loop synced every step; so does this reference
            seen += len(yb)
        seconds = time.perf_counter() - t0
        _, acc = evaluate(model, data.x_test, data.y_test, data.mean, data.std, device)
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "held_out_acc": acc, "seconds": seconds})
        log(f"epoch {epoch}/{epochs}: train loss {loss_sum / seen:.3f}  held-out acc {acc:.4f}  {seconds:.0f} s")
    return history


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m train.baseline", description="Throughput of the seed-style loop.")
    p.add_argument("spec")
    p.add_argument("--dataset", default="cifar10", help="cifar10, digits, synthetic, or the path of your own images")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, help="train this many epochs and report accuracy instead of throughput")
    p.add_argument("--val-size", type=int, help="with --epochs: hold out this many training images for validation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = check_device(args.device)  # before the data is loaded: one error line, not a traceback
    data = load_dataset(args.dataset, args.data_dir)
    if args.epochs:
        model = build(replace(load_spec(args.spec), num_classes=data.num_classes))
        result = {"spec": args.spec, "dataset": data.name, "epochs": args.epochs, "device": str(device)}
        if args.val_size:
            split = train_val_split(data, args.val_size, seed=args.seed)
            history = train_seed_style(model, split, args.epochs, workers=args.workers, seed=args.seed, device=device)
            result |= {"val_size": args.val_size, "val_acc": history[-1]["held_out_acc"]}
            data = replace(split, name=data.name, x_test=data.x_test, y_test=data.y_test)  # split's normalisation
        else:
            history = train_seed_style(model, data, args.epochs, workers=args.workers, seed=args.seed, device=device)
        _, result["test_acc"] = evaluate(model, data.x_test, data.y_test, data.mean, data.std, device)
        result["train_seconds"] = round(sum(h["seconds"] for h in history), 1)
        print(json.dumps(result))
        return 0
    ips = seed_loop_throughput(build(load_spec(args.spec)), data.x_train, data.y_train, data.mean, data.std,
                               args.seconds, workers=args.workers, device=device)
    print(json.dumps({"baseline_images_per_s": round(ips, 1), "device": str(device)}))
    return 0


if __name__ == "__main__":
    from space.genome import GenomeError
    from space.cli import run_cli
    from .data import DataError
    from .device import DeviceError
    run_cli(main, (GenomeError, DataError, DeviceError))
