"""Aten ops per training step, split into the model (forward + loss + backward) and the rest (loader and
augmentation, optimizer, scheduler, EMA, the step's metrics), for seed003_net and the median (by MACs) of
51 genomes the search space samples. Every aten op is at least one kernel launch on a GPU, so for a net this
small the count bounds the step rate there; on the CPU it is only counted, not timed.

    python results/benchmarks/ops_per_step/ops_per_step.py [--batch-size 128] [--json]

The step is train.engine.train's loop body, taken apart into its phases with the same objects (DeviceLoader,
make_optimizer, WeightEMA); a whole train() epoch is also counted and divided by its steps, as a check that the
phases add up to what the engine does. Works on any checkout with those names (to count an older commit, run
this file with PYTHONPATH pointing at that checkout).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

# appended, not prepended: a PYTHONPATH naming another checkout (e.g. an older commit) wins
sys.path.append(str(Path(__file__).resolve().parents[3]))


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, under the label of the current phase."""

    def __init__(self):
        super().__init__()
        self.phase = "other"
        self.counts: Counter = Counter()
        self.ops: dict[str, Counter] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.phase] += 1
        self.ops.setdefault(self.phase, Counter())[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def median_genome(n: int = 51):
    from search.bench import sample_typical
    from space import analyze

    genomes = sorted(sample_typical(n, seed=0), key=lambda g: analyze(g).macs)
    return genomes[n // 2]


def count_step(genome, batch: int) -> dict:
    """Ops of one training step (the third, after two warm-up steps), per phase."""
    from space import build
    from train.augment import AugmentConfig
    from train.data import make_synthetic
    from train.engine import TrainConfig, WeightEMA, make_optimizer
    from train.loader import DeviceLoader

    data = make_synthetic(batch * 4, 16, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=batch, device="cpu", augment=AugmentConfig())
    torch.manual_seed(0)
    model = build(genome).to(memory_format=torch.channels_last)
    loader = DeviceLoader(data.x_train, data.y_train, data.mean, data.std, batch, "cpu", train=True,
                          augment=cfg.augment, seed=0)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=100)
    ema = WeightEMA(model, cfg.ema_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    model.train()
    batches = iter(loader)
    counter = OpCounter()
    for step in range(3):
        mode = counter if step == 2 else None
        if mode:
            mode.__enter__()
        try:
            counter.phase = "loader+augment"
            x, y = next(batches)
            counter.phase = "model (fwd+loss+bwd)"
            out = model(x)
            loss = criterion(out.float(), y)
            counter.phase = "optimizer"
            optimizer.zero_grad(set_to_none=True)
            counter.phase = "model (fwd+loss+bwd)"
            loss.backward()
            counter.phase = "optimizer"
            optimizer.step()
            counter.phase = "scheduler"
            scheduler.step()
            counter.phase = "ema"
            ema.update()
            counter.phase = "metrics"
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
        finally:
            if mode:
                mode.__exit__(None, None, None)
    return {"phases": dict(counter.counts), "ops": {k: dict(v) for k, v in counter.ops.items()},
            "top_ops": {k: dict(v.most_common(6)) for k, v in counter.ops.items()}}


def count_train_epoch(genome, batch: int, steps: tuple[int, int] = (4, 8)) -> float:
    """Ops per step of train() itself (no evaluation, no checkpoint): the ops of a one-epoch run of steps[1]
    steps minus those of one of steps[0], over the difference, so that set-up (building the net, the
    optimizer, the EMA copy) cancels out."""
    from train.data import make_synthetic
    from train.engine import TrainConfig, train

    totals = []
    for n in steps:
        data = make_synthetic(batch * n, 16, seed=0)
        cfg = TrainConfig(epochs=1, batch_size=batch, device="cpu", eval_every=-1, checkpoint=None)
        counter = OpCounter()
        with counter:
            train(genome, cfg, data)
        totals.append(sum(counter.counts.values()))
    return (totals[1] - totals[0]) / (steps[1] - steps[0])


def launches(ops: dict[str, int]) -> int:
    """Ops that can launch a kernel: all but the views and metadata ops, which only make a new tensor header."""
    return sum(n for name, n in ops.items() if name not in METADATA_OPS)


METADATA_OPS = {"view", "detach", "permute", "slice", "select", "expand", "as_strided", "alias", "t", "unsqueeze",
                "squeeze", "_unsafe_view", "transpose", "_record_function_enter_new", "_record_function_exit",
                "_reshape_alias", "split", "unbind"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    from space import analyze, load_spec

    report = {"torch": torch.__version__, "batch_size": args.batch_size, "nets": {}}
    for name, genome in (("seed003_net", load_spec("seed003_net")), ("median sampled", median_genome())):
        step = count_step(genome, args.batch_size)
        phases = step["phases"]
        model_ops = phases.get("model (fwd+loss+bwd)", 0)
        total = sum(phases.values())
        a = analyze(genome)
        kernels = {k: launches(v) for k, v in step["ops"].items()}
        model_kernels = kernels.get("model (fwd+loss+bwd)", 0)
        row = {"summary": genome.summary(), "params": a.params, "macs": a.macs, "total": total, "model": model_ops,
               "non_model": total - model_ops, "phases": phases, "kernel_ops": kernels,
               "kernel_ops_model": model_kernels, "kernel_ops_non_model": sum(kernels.values()) - model_kernels,
               "train_epoch_ops_per_step": round(count_train_epoch(genome, args.batch_size), 1),
               "top_ops": step["top_ops"]}
        report["nets"][name] = row
        print(f"{name}: {genome.summary()} ({a.params:,} params, {a.macs / 1e6:.1f} M MACs)")
        print(f"  ops per step: {total} = model {model_ops} + non-model {total - model_ops} "
              f"({(total - model_ops) / total:.0%}); train() itself: {row['train_epoch_ops_per_step']} per step")
        print(f"  of which may launch a kernel (not views/metadata): model {model_kernels} + non-model "
              f"{row['kernel_ops_non_model']}")
        for phase, n in sorted(phases.items(), key=lambda kv: -kv[1]):
            print(f"    {phase:<22} {n:>5} ({kernels[phase]:>4} kernel ops)   most frequent: {step['top_ops'][phase]}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
