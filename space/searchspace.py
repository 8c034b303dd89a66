"""The search space: the one place that calls `trial.suggest_*`.

A trial samples the *shape* of a net; its widths are then derived so that the net fills a sampled fraction
of the parameter budget, and its dilations so that the receptive field reaches the minimum: most
candidates are feasible by construction, and the analytic check (space.check) stays the final gate.

Up to twenty-six named parameters; a trial holds only those its net uses (space version 3), so that TPE and
optuna-dashboard's importance and parallel-coordinate plots learn from choices that were made, never from a
dilation of a block with no body layer or a skip of a net without residual blocks:
    c{b}_rel       relative width of block b (an integer on a per-block range; ordinal for TPE); every layer
                   of the block has width ~ multiplier * c{b}_rel, the multiplier solved for the budget
    c{b}_depth     layers in block b (1..3); C1's first layer is always a 3x3 conv stem
    c{b}_op        "conv3" or "dsc3" for the block's 3x3 layers (depthwise-separable placement); asked only
                   where the block has a 3x3 layer besides C1's stem
    c{b}_dilation  dilation of the block's body 3x3 layers (1, 2 or 4), raised if the RF needs it; asked only
                   where the block has a body layer (neither the stem nor a strided or dilating transition)
    c{b}_skip      whether block b is residual; asked only if `residual` is "on"
    down{k}        how C1..C3 end (k = 1..3): "stride" (stride-2 last layer), "dilate" (stride 1,
                   dilation 2: grows the RF, keeps resolution) or "none" (an ordinary layer)
    residual       "on" or "off": whether the c{b}_skip apply (so about half the nets have a residual add)
    budget         the parameter count to fill, in percent of max_params (65..100)
    dropout        before the classifier

Construction, in order (in construct):
    1. the shape from the parameters above;
    2. rules the shape can meet whatever the widths: if no block is separable, C4's 3x3 layers become
       DSC; then, while the RF is below min_rf, the dilation of the 3x3 layers with the largest jump steps
       up (1 -> 2 -> 4 -> 8), which also ensures a dilated conv; dilation costs no parameters and no MACs;
    3. widths: multiples of 8 of multiplier * c{b}_rel * 8 channels (at least 8), the multiplier the
       largest whose exact analytic parameter count stays <= budget and whose MACs per image stay <=
       max_macs (bisection; both counts grow with the multiplier), then each block in turn widened by 8
       while both still fit, in passes until none can be (construction 3; 2 made one pass);
    4. only if max_macs is set and even the narrowest widths (8 channels everywhere) exceed it: the shape
       is made cheaper and steps 2-3 repeat, first each down{k} that keeps the resolution ("dilate" or
       "none") becomes "stride", C1's first, then every 3x3 layer but the stem becomes DSC. A shape still
       over the cap comes out at its cheapest, and the construction's note says why it will be rejected.
`trial` is anything with Optuna's suggest_int / suggest_categorical: an optuna.Trial, or `RandomTrial`
for sampling without a study (space.sample, tests).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Protocol, Sequence

from .analysis import analyze
from .genome import Genome, Head, Layer
from .latency import predict_latency
from .rules import DEFAULT_MAX_PARAMS, Rules, RulesError, check

__all__ = ["SPACE_VERSION", "RESUMABLE_SPACES", "CONSTRUCTION_VERSION", "Construction", "construct", "suggest_genome",
           "params_from_genome", "RandomTrial", "TrialLike", "REL_RANGES", "DILATIONS", "DOWNS", "DROPOUTS",
           "BUDGET_PERCENT", "MAX_WIDTH", "check_satisfiable", "random_rejection_rate"]

# Per block (low, high) relative width, in units of 8 channels at multiplier 1: wider deeper, as in every
# seed; only the ratios matter, since the multiplier is solved for the budget.
REL_RANGES = ((2, 8), (2, 16), (4, 24), (4, 32))
DEPTH_RANGE = (1, 3)
BLOCK_OPS = ("conv3", "dsc3")
DILATIONS = (1, 2, 4)
RAISED_DILATIONS = (1, 2, 4, 8)  # the construction may go one step beyond the sampled ones to reach min_rf
DOWNS = ("stride", "dilate", "none")
RESIDUAL = ("off", "on")
DROPOUTS = (0.0, 0.05, 0.1)
# The parameters above and their meaning. A study stores the version it was created with (search.settings):
# TPE cannot learn from trials whose parameters mean something else, so a study of another version is not
# resumed. 1: fixed widths per block, no residual blocks (before the budget-filling construction); 2: all 26
# parameters on every trial; 3: only the choices the built net has (_sample_shape).
SPACE_VERSION = 3
RESUMABLE_SPACES = (2, 3)  # the versions _sample_shape still samples: a study of one of them resumes with it
# How a point of the space becomes a genome under given rules. A study stores it too (search.settings) and
# resumes with the construction it began with. 1: the widths fill the parameter budget, max_macs is only
# checked afterwards; 2: the widths respect max_macs too, and a shape over it adapts (step 4 above); 3: the
# widening of step 3 repeats until no block can take 8 more channels (2 made one pass).
CONSTRUCTION_VERSION = 3
BUDGET_PERCENT = (65, 100, 1)  # low, high, step: percent of max_params (median 82.5)
MAX_WIDTH = 512  # channels: caps the multiplier for shapes that cannot fill the budget


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclasses.dataclass(frozen=True)
class _Shape:
    """Everything but the widths: per block its layers as (op, stride, dilation, is_transition)."""
    rel: tuple[int, ...]
    layers: tuple[tuple[tuple[str, int, int, bool], ...], ...]
    residual: tuple[bool, ...]
    dropout: float
    num_classes: int

    def genome(self, widths: Sequence[int]) -> Genome:
        blocks = [[Layer(op, w, stride=s, dilation=d) for op, s, d, _ in block]
                  for block, w in zip(self.layers, widths)]
        return Genome(blocks=blocks, head=Head("linear", bias=True, dropout=self.dropout),
                      num_classes=self.num_classes, residual=self.residual)


def _sample_shape(trial: TrialLike, num_classes: int, space: int = SPACE_VERSION) -> tuple[_Shape, float]:
    """The sampled shape and budget fraction. Space 3 asks only for the choices the net will have: a block's op
    only where it has a 3x3 layer besides the stem, its dilation only where it has a body layer (neither the
    stem nor a strided or dilating transition), the skips only with residual "on". Space 2 asked for all 26 on
    every trial, so that TPE saw choices the net never made (a study of space 2 resumes with it)."""
    if space < 3:
        return _sample_shape_v2(trial, num_classes)
    rel = [trial.suggest_int(f"c{b}_rel", lo, hi) for b, (lo, hi) in enumerate(REL_RANGES, 1)]
    depth = [trial.suggest_int(f"c{b}_depth", *DEPTH_RANGE) for b in range(1, 5)]
    downs = [trial.suggest_categorical(f"down{k}", DOWNS) for k in range(1, 4)] + ["none"]  # C4 keeps its size
    blocks = []
    for b in range(1, 5):
        n, down = depth[b - 1], downs[b - 1]
        # layer i is the stem (C1's first: a plain conv, dilation 1) or a transition (the last, unless "none")
        stem = [b == 1 and i == 0 for i in range(n)]
        transition = [i == n - 1 and down != "none" for i in range(n)]
        op = trial.suggest_categorical(f"c{b}_op", BLOCK_OPS) if not all(stem) else "conv3"
        body = [not s and not t for s, t in zip(stem, transition)]
        dilation = trial.suggest_categorical(f"c{b}_dilation", DILATIONS) if any(body) else 1
        layers = [["conv3" if stem[i] else op, 1, 1 if stem[i] else dilation, False] for i in range(n)]
        if down == "stride":
            layers[-1][1:] = [2, 1, True]
        elif down == "dilate":
            layers[-1][1:] = [1, 2, True]
        blocks.append(layers)
    on = trial.suggest_categorical("residual", RESIDUAL) == "on"
    skips = [trial.suggest_categorical(f"c{b}_skip", (False, True)) if on else False for b in range(1, 5)]
    lo, hi, step = BUDGET_PERCENT
    budget = trial.suggest_int("budget", lo, hi, step=step) / 100
    dropout = trial.suggest_categorical("dropout", DROPOUTS)
    shape = _Shape(tuple(rel), tuple(tuple(tuple(l) for l in block) for block in blocks), tuple(skips), dropout,
                   num_classes)
    return shape, budget


def _sample_shape_v2(trial: TrialLike, num_classes: int) -> tuple[_Shape, float]:
    """Space 2: all 26 parameters on every trial, used or not."""
    rel, blocks = [], []
    for b, (lo, hi) in enumerate(REL_RANGES, 1):
        rel.append(trial.suggest_int(f"c{b}_rel", lo, hi))
        depth = trial.suggest_int(f"c{b}_depth", *DEPTH_RANGE)
        op = trial.suggest_categorical(f"c{b}_op", BLOCK_OPS)
        dilation = trial.suggest_categorical(f"c{b}_dilation", DILATIONS)
        layers = [[op, 1, dilation, False] for _ in range(depth)]
        if b == 1:  # a separable conv on 3 input channels is nearly free and useless: the stem is plain
            layers[0] = ["conv3", 1, 1, False]
        blocks.append(layers)
    for k in range(1, 4):
        down = trial.suggest_categorical(f"down{k}", DOWNS)
        last = blocks[k - 1][-1]
        if down == "stride":
            last[1:] = [2, 1, True]
        elif down == "dilate":
            last[1:] = [1, 2, True]
    skips = [trial.suggest_categorical(f"c{b}_skip", (False, True)) for b in range(1, 5)]
    on = trial.suggest_categorical("residual", RESIDUAL) == "on"
    lo, hi, step = BUDGET_PERCENT
    budget = trial.suggest_int("budget", lo, hi, step=step) / 100
    dropout = trial.suggest_categorical("dropout", DROPOUTS)
    shape = _Shape(tuple(rel), tuple(tuple(tuple(l) for l in block) for block in blocks),
                   tuple(on and s for s in skips), dropout, num_classes)
    return shape, budget


def _meet_rules(shape: _Shape, min_rf: int) -> _Shape:
    """Step 2: a separable conv, a dilated conv and RF >= min_rf, where dilations can give them."""
    layers = [[list(layer) for layer in block] for block in shape.layers]
    if not any(op == "dsc3" for block in layers for op, *_ in block):
        for layer in layers[3]:  # C4 has no transition layer: all its layers are 3x3 body layers
            layer[0] = "dsc3"
    while True:
        current = dataclasses.replace(shape, layers=tuple(tuple(tuple(l) for l in block) for block in layers))
        g = current.genome([8] * 4)  # RF and dilations do not depend on the widths
        a = analyze(g)
        if a.rf >= min_rf and any(l.dilated for l in g.layers):
            return current
        # Body layers (neither the stem nor a transition, whose stride or dilation encodes down{k}) whose
        # dilation can still grow, as (jump, block, index): a step where the jump is largest adds the most RF.
        positions = [(b, i) for b, block in enumerate(layers) for i in range(len(block))]  # as in a.layers
        raisable = [(info.jump, b, i) for info, (b, i) in zip(a.layers, positions)
                    if not layers[b][i][3] and (b, i) != (0, 0) and layers[b][i][2] < RAISED_DILATIONS[-1]]
        if not raisable:
            return current
        _, b, i = max(raisable)  # ties: the deepest block
        step_to = next(d for d in RAISED_DILATIONS if d > layers[b][i][2])
        for j, layer in enumerate(layers[b]):  # the block's body keeps one dilation, as sampled
            if not layer[3] and (b, j) != (0, 0):
                layer[2] = max(layer[2], step_to)


def _widths(shape: _Shape, multiplier: float) -> list[int]:
    return [min(MAX_WIDTH, max(8, 8 * round(multiplier * r))) for r in shape.rel]


def _fill(shape: _Shape, target: int, max_macs: int | None, settle: bool = True) -> list[int] | None:
    """Step 3: the widths (multiples of 8) whose parameter count comes closest to `target` from below with
    MACs per image <= max_macs; None if even the narrowest widths break one of the two."""
    memo: dict[tuple[int, ...], bool] = {}

    def fits(widths: list[int]) -> bool:
        key = tuple(widths)
        if key not in memo:
            a = analyze(shape.genome(widths))
            memo[key] = a.params <= target and (max_macs is None or a.macs <= max_macs)
        return memo[key]

    lo, hi = 0.0, MAX_WIDTH / 8 / min(shape.rel)
    if not fits(_widths(shape, lo)):
        return None
    # the widths are monotone step functions of the multiplier: once lo and hi give the same, so does all
    # between; else stop when the interval is far below any width step (lo and hi straddle one breakpoint)
    while _widths(shape, lo) != _widths(shape, hi) and hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(_widths(shape, mid)) else (lo, mid)
    widths = _widths(shape, lo)
    while True:  # the rounding leaves up to a step of every block unspent: take what still fits
        before = list(widths)
        for b in range(4):
            while widths[b] + 8 <= MAX_WIDTH and fits(widths[:b] + [widths[b] + 8] + widths[b + 1:]):
                widths[b] += 8
        # A second pass: the count is not monotone in a block's width where a residual shortcut turns from a
        # projection into an identity (a later block widened to its input's width), which can free room for
        # an earlier block. Construction 2 made one pass only (`settle` False: its studies resume as they were).
        if widths == before or not settle:
            return widths


def _cheaper(shape: _Shape) -> list[_Shape]:
    """Step 4: ever cheaper variants of a sampled shape (before step 2), for a MACs cap its narrowest widths
    break: each down{k} that keeps the resolution made a stride in turn (C1's first: it saves the most),
    then every 3x3 layer but the stem separable."""
    layers = [[list(layer) for layer in block] for block in shape.layers]
    variants = []
    for k in range(3):
        last = layers[k][-1]
        if last[1] != 2:  # "dilate" or "none": the blocks after it run at this block's resolution
            last[1:] = [2, 1, True]
            variants.append([[list(l) for l in block] for block in layers])
    for b, block in enumerate(layers):
        for i, layer in enumerate(block):
            if (b, i) != (0, 0):
                layer[0] = "dsc3"
    variants.append(layers)
    return [dataclasses.replace(shape, layers=tuple(tuple(tuple(l) for l in block) for block in v)) for v in variants]


@dataclasses.dataclass(frozen=True)
class Construction:
    """A constructed genome, and why it breaks the rules if the construction knows (else "")."""
    genome: Genome
    note: str = ""


def construct(trial: TrialLike, rules: Rules = Rules(), num_classes: int = 10,
              version: int = CONSTRUCTION_VERSION, space: int = SPACE_VERSION) -> Construction:
    """The genome of the trial's shape, built to fill its budget fraction of rules.max_params with RF >=
    rules.min_rf and, from construction version 2 on, MACs <= rules.max_macs (see the module docstring)."""
    if version not in (1, 2, 3):
        raise ValueError(f"unknown construction version {version} (this one knows 1 to 3)")
    sampled, budget = _sample_shape(trial, num_classes, space)
    target = int(budget * rules.max_params)
    max_macs = rules.max_macs if version >= 2 else None
    shape = _meet_rules(sampled, rules.min_rf)
    widths = _fill(shape, target, max_macs, settle=version >= 3)
    if widths is not None:
        return Construction(shape.genome(widths))
    narrowest = shape.genome(_widths(shape, 0.0))
    if analyze(narrowest).params > target or max_macs is None:
        return Construction(narrowest)  # over the parameter budget at 8 channels: the check says so
    for variant in _cheaper(sampled):
        cheaper = _meet_rules(variant, rules.min_rf)
        widths = _fill(cheaper, target, max_macs, settle=version >= 3)
        if widths is not None:
            return Construction(cheaper.genome(widths))
    return Construction(cheaper.genome(_widths(cheaper, 0.0)),
                        "over the MACs cap even at the narrowest widths (8 channels), with every downsampling a "
                        "stride and every 3x3 layer but the stem separable")


def suggest_genome(trial: TrialLike, num_classes: int = 10, rules: Rules | None = None, *,
                   max_params: int | None = None, min_rf: int | None = None, max_macs: int | None = None,
                   version: int = CONSTRUCTION_VERSION) -> Genome:
    """construct(...).genome; the keywords override single fields of `rules` (default Rules())."""
    rules = rules or Rules()
    given = {k: v for k, v in (("max_params", max_params), ("min_rf", min_rf), ("max_macs", max_macs)) if v is not None}
    if given:
        rules = dataclasses.replace(rules, **given)
    return construct(trial, rules, num_classes, version).genome


def _nearest(value: float, choices: Sequence) -> Any:
    return min(choices, key=lambda c: (abs(c - value), c))


def params_from_genome(genome: Genome, max_params: int = DEFAULT_MAX_PARAMS) -> dict[str, Any]:
    """The point of the space nearest to any genome (e.g. a seed preset), for warm-starting TPE.

    An approximation: the space expresses neither per-layer widths nor 1x1 layers, and the construction
    may raise dilations and re-derive widths. Enqueued trials carry their exact genome besides.
    """
    params: dict[str, Any] = {}
    for b, block in enumerate(genome.blocks, 1):
        lo, hi = REL_RANGES[b - 1]
        body = block[:-1] if b < 4 else block  # the transition layer encodes down{b}
        threes = [l for l in block if l.kernel == 3][1 if b == 1 else 0:] or [l for l in block if l.kernel == 3]
        params[f"c{b}_rel"] = min(hi, max(lo, round(block[-1].out / 8)))
        params[f"c{b}_depth"] = min(DEPTH_RANGE[1], max(DEPTH_RANGE[0], len(block)))
        params[f"c{b}_op"] = "dsc3" if sum(l.separable for l in threes) * 2 > len(threes) else "conv3"
        params[f"c{b}_dilation"] = _nearest(max([l.dilation for l in body] or [1]), DILATIONS)
        params[f"c{b}_skip"] = genome.residual[b - 1]
    for k in range(1, 4):
        last = genome.blocks[k - 1][-1]
        params[f"down{k}"] = "stride" if last.stride == 2 else "dilate" if last.dilated else "none"
    params["residual"] = "on" if any(genome.residual) else "off"
    lo, hi, step = BUDGET_PERCENT
    params["budget"] = min(hi, max(lo, step * round(100 * analyze(genome).params / max_params / step)))
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


# Before any training: can some genome of the space meet the rules at all, and how often does a uniform draw
# break them (the baseline TPE should beat).

def check_satisfiable(rules: Rules, num_classes: int = 10, probes: int = 500, seed: int = 0) -> None:
    """RulesError (one line), before any training, if no probed genome meets the rules.

    The probes are uniform samples of the space, whose construction fills each one's budget fraction of
    max_params within max_macs (a shape too large even at its cheapest comes out at its narrowest widths, so
    the fewest parameters and MACs are probed too) and raises dilations to reach min_rf. Fast: analysis is
    analytic.
    """
    max_params, min_rf, max_macs = rules.max_params, rules.min_rf, rules.max_macs
    rng = random.Random(seed)
    fewest, widest_rf = None, 0  # fewest params among nets meeting the RF and op rules; largest RF in budget
    fewest_macs = None  # fewest MACs per image among nets meeting the RF and op rules
    for _ in range(probes):
        genome = suggest_genome(RandomTrial(rng), num_classes=num_classes, rules=rules)
        if not check(genome, rules):
            return
        a = analyze(genome)
        ops_ok = any(l.separable for l in genome.layers) and any(l.dilated for l in genome.layers)
        if ops_ok and a.rf >= min_rf:
            fewest = a.params if fewest is None else min(fewest, a.params)
            fewest_macs = a.macs if fewest_macs is None else min(fewest_macs, a.macs)
        if ops_ok and a.params <= max_params:
            widest_rf = max(widest_rf, a.rf)
    found = (f"the fewest parameters with RF >= {min_rf} is {fewest:,}" if fewest is not None
             else f"none reaches RF {min_rf}")
    if max_macs is not None and fewest_macs is not None:
        found += f", the fewest MACs {fewest_macs:,}"
    macs = f", --max-macs {max_macs:,}" if max_macs is not None else ""
    if rules.max_latency_ms is not None:
        fastest = min(predict_latency(suggest_genome(RandomTrial(rng), num_classes=num_classes, rules=rules),
                                      rules.latency).ms for _ in range(probes))
        macs += f", --max-latency-ms {rules.max_latency_ms:g}"
        found += f", the lowest predicted latency {fastest:.3f} ms"
    raise RulesError(f"no genome of the search space meets --max-params {max_params:,}{macs} and --min-rf {min_rf} "
                      f"({probes} genomes probed: {found}; "
                      + (f"the largest RF within {max_params:,} parameters is {widest_rf}" if widest_rf else
                         f"none of them fits within {max_params:,} parameters") + "); relax the constraints")


def random_rejection_rate(rules: Rules, probes: int = 500, seed: int = 0,
                          construction: int = CONSTRUCTION_VERSION) -> float:
    """The fraction of uniformly drawn genomes that break the rules: the baseline TPE should beat."""
    rng = random.Random(seed)
    return sum(bool(check(suggest_genome(RandomTrial(rng), rules=rules, version=construction), rules))
               for _ in range(probes)) / probes
