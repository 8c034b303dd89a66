"""The plain seed-style training loop, kept as the benchmark baseline: `python -m train.baseline SPEC ...`.

What the seed notebooks did: a torch DataLoader with 2 workers running the albumentations pipeline image
by image, NCHW float32 batches of 128, plain SGD with momentum, a tqdm-free loop. train.bench measures it
in the same run as the project's pipeline.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn as nn

from .augment import AugmentConfig
from .loader import make_dataloader

__all__ = ["seed_loop_throughput", "main"]


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
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup_batches:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            elif start is not None:
                seen += len(yb)
                if time.perf_counter() - start >= seconds:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    from space import build, load_spec
    from space.spec import CliParser
    from .data import load_dataset
    from .engine import resolve_device

    p = CliParser(prog="python -m train.baseline", description="Throughput of the seed-style loop.")
    p.add_argument("spec")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir)
    device = resolve_device(args.device)
    ips = seed_loop_throughput(build(load_spec(args.spec)), data.x_train, data.y_train, data.mean, data.std,
                               args.seconds, workers=args.workers, device=device)
    print(json.dumps({"baseline_images_per_s": round(ips, 1), "device": str(device)}))
    return 0


if __name__ == "__main__":
    from space.genome import GenomeError
    from space.spec import run_cli
    from .data import DataError
    run_cli(main, (GenomeError, DataError))
