"""The search space: the one place that calls `trial.suggest_*`.

Twenty named parameters, none conditional, so TPE models each one on every trial:
    c{b}_width     output channels of every layer of block b (a range per block, step 8; ordinal for TPE)
    c{b}_depth     layers in block b (1..3); C1's first layer is always a 3x3 conv stem
    c{b}_op        "conv3" or "dsc3" for the block's 3x3 layers (depthwise-separable placement)
    c{b}_dilation  dilation of the block's non-transition 3x3 layers (1, 2 or 4)
    down{k}        how C1..C3 end (k = 1..3): "stride" (stride-2 last layer), "dilate" (stride 1,
                   dilation 2: grows the RF, keeps resolution) or "none" (an ordinary layer)
    dropout        before the classifier
`trial` is anything with Optuna's suggest_int / suggest_categorical: an optuna.Trial, or `RandomTrial`
for sampling without a study (space.sample, tests).
"""
from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

from .genome import Genome, Head, Layer

__all__ = ["suggest_genome", "params_from_genome", "RandomTrial", "TrialLike", "WIDTH_RANGES", "DILATIONS",
           "DOWNS", "DROPOUTS"]

# Per block (low, high, step) in channels: wider deeper, as in every seed; a 3x3 conv at 256 -> 256 alone
# would spend 590k parameters, so the ranges keep most of the space near the 200k budget.
WIDTH_RANGES = ((16, 64, 8), (16, 128, 8), (32, 192, 8), (32, 256, 8))
DEPTH_RANGE = (1, 3)
BLOCK_OPS = ("conv3", "dsc3")
DILATIONS = (1, 2, 4)
DOWNS = ("stride", "dilate", "none")
DROPOUTS = (0.0, 0.05, 0.1)


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def suggest_genome(trial: TrialLike, num_classes: int = 10) -> Genome:
    blocks = []
    for b, (lo, hi, step) in enumerate(WIDTH_RANGES, 1):
        width = trial.suggest_int(f"c{b}_width", lo, hi, step=step)
        depth = trial.suggest_int(f"c{b}_depth", *DEPTH_RANGE)
        op = trial.suggest_categorical(f"c{b}_op", BLOCK_OPS)
        dilation = trial.suggest_categorical(f"c{b}_dilation", DILATIONS)
        layers = [Layer(op, width, dilation=dilation) for _ in range(depth)]
        if b == 1:  # a separable conv on 3 input channels is nearly free and useless: the stem is plain
            layers[0] = Layer("conv3", width)
        blocks.append(layers)
    for k in range(1, 4):
        down = trial.suggest_categorical(f"down{k}", DOWNS)
        last = blocks[k - 1][-1]
        if down == "stride":
            blocks[k - 1][-1] = Layer(last.op, last.out, stride=2)
        elif down == "dilate":
            blocks[k - 1][-1] = Layer(last.op, last.out, dilation=2)
    dropout = trial.suggest_categorical("dropout", DROPOUTS)
    return Genome(blocks=blocks, head=Head("linear", bias=True, dropout=dropout), num_classes=num_classes)


def _nearest(value: float, choices: Sequence) -> Any:
    return min(choices, key=lambda c: (abs(c - value), c))


def params_from_genome(genome: Genome) -> dict[str, Any]:
    """The point of the space nearest to any genome (e.g. a seed preset), for warm-starting TPE.

    Exact for genomes that suggest_genome produced; an approximation for hand-designed ones, whose
    per-layer widths and 1x1 layers the space does not express.
    """
    params: dict[str, Any] = {}
    for b, block in enumerate(genome.blocks, 1):
        lo, hi, step = WIDTH_RANGES[b - 1]
        body = block[:-1] if b < 4 else block  # the transition layer encodes down{b}
        threes = [l for l in block if l.kernel == 3][1 if b == 1 else 0:] or [l for l in block if l.kernel == 3]
        params[f"c{b}_width"] = min(hi, max(lo, round(block[-1].out / step) * step))
        params[f"c{b}_depth"] = min(DEPTH_RANGE[1], max(DEPTH_RANGE[0], len(block)))
        params[f"c{b}_op"] = "dsc3" if sum(l.separable for l in threes) * 2 > len(threes) else "conv3"
        params[f"c{b}_dilation"] = _nearest(max([l.dilation for l in body] or [1]), DILATIONS)
    for k in range(1, 4):
        last = genome.blocks[k - 1][-1]
        params[f"down{k}"] = "stride" if last.stride == 2 else "dilate" if last.dilated else "none"
    params["dropout"] = _nearest(genome.head.dropout, DROPOUTS)
    return params


class RandomTrial:
    """Uniform sampling with Optuna's suggest_* signatures, for drawing genomes without a study."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        self.params[name] = v = self.rng.randrange(low, high + 1, step)
        return v

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = v = choices[self.rng.randrange(len(choices))]
        return v
