"""Exact, analytic properties of a genome: parameters, MACs, and per-layer size, receptive field and jump.

No model is instantiated. Parameters count what torchsummary counts as trainable: conv and linear
weights and biases, and BatchNorm's weight and bias (2 per channel). MACs are multiply-accumulates per
image of the convs and the classifier (BatchNorm, ReLU and pooling are not counted).

Peak activation memory (`Analysis.peak_activations`, in tensor *elements* per image; x4 for bytes at fp32)
is that of a layer-by-layer executor that frees a tensor as soon as the next op has consumed it, the
figure microcontroller deployment tools call peak SRAM: the maximum over the ops of the forward pass
(each conv, BatchNorm, ReLU, pooling, the classifier) of the elements of the op's input plus its output.
In-place ops (the ReLUs) count their one tensor once. Weights and kernels' scratch space are not included.
A residual block keeps its input alive until the add, so every op of its body also counts that tensor
(except the first, which reads it); then the shortcut runs after the body: a projection's conv holds
input + body output + its output, its BN body output + two tensors; the add body output + shortcut output.

Receptive field (RF) and jump follow the usual recurrence along one axis, in input pixels:
    rf_out = rf_in + (k - 1) * dilation * jump_in,    jump_out = jump_in * stride.
A residual block's output sums two paths with the same jump (the shortcut strides as the block does), so
its RF is the larger of the two: the body's, or the block input's (a 1x1 shortcut adds nothing). All
kernels are odd and centred, so both footprints share a centre and the union is the larger one.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .genome import Genome, Layer

__all__ = ["LayerInfo", "ShortcutInfo", "Analysis", "analyze", "layer_params", "layer_peak_activations"]


@dataclass(frozen=True)
class LayerInfo:
    name: str  # e.g. "c2.1", the built module's submodule name
    layer: Layer
    cin: int
    size: int  # output height = width, pixels
    rf: int  # receptive field after this layer, input pixels
    jump: int  # distance in input pixels between adjacent outputs of this layer
    params: int
    macs: int  # per image


@dataclass(frozen=True)
class ShortcutInfo:
    name: str  # e.g. "c2.skip", the built module's submodule name
    kind: str  # "identity" or "projection" (1x1 conv + BN)
    cin: int
    cout: int
    stride: int  # the block's total stride
    size: int  # output height = width, pixels
    rf: int  # receptive field of the block output over both paths, input pixels
    params: int
    macs: int  # per image; the add itself is not counted


@dataclass(frozen=True)
class Analysis:
    layers: tuple[LayerInfo, ...]
    head_params: int
    head_macs: int
    input_size: int
    peak_activations: int  # elements per image (x4: bytes at fp32), see the module docstring
    shortcuts: tuple[ShortcutInfo, ...] = ()  # one per residual block, in block order

    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers) + sum(s.params for s in self.shortcuts) + self.head_params

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers) + sum(s.macs for s in self.shortcuts) + self.head_macs

    @property
    def rf(self) -> int:
        return self.layers[-1].rf

    @property
    def final_size(self) -> int:
        return self.layers[-1].size


def layer_params(layer: Layer, cin: int) -> int:
    k, cout = layer.kernel, layer.out
    if layer.separable:
        p = cin * k * k + cin * cout + 2 * cout  # depthwise, pointwise, BN
        return p + (2 * cin if layer.dw_post else 0)
    return cin * cout * k * k + 2 * cout  # bias-free conv, BN


def _layer_macs(layer: Layer, cin: int, size: int) -> int:
    k = layer.kernel
    per_pixel = cin * k * k + cin * layer.out if layer.separable else cin * layer.out * k * k
    return size * size * per_pixel


def layer_peak_activations(layer: Layer, cin: int, size_in: int, size: int, held: int = 0,
                           reads_held: bool = False) -> int:
    """Largest input + output of one op inside a layer, elements per image (see the module docstring).

    `held`: elements kept alive meanwhile by a residual block for its shortcut (the block input), added to
    every op except the first one when that op reads the held tensor itself (`reads_held`)."""
    a_in, mid, out = cin * size_in * size_in, cin * size * size, layer.out * size * size
    first = a_in + (mid if layer.separable else out)  # depthwise in -> mid, or the conv in -> out
    ops = [2 * out]  # BatchNorm: out -> new out (ReLU is in place: one tensor)
    if layer.separable:
        ops.append(mid + out)  # pointwise mid -> out
        if layer.dw_post:
            ops.append(2 * mid)  # BatchNorm between the two parts
    return max(first + (0 if reads_held else held), max(ops) + held)


def _peak_activations(rows: list[LayerInfo], shortcuts: dict[int, ShortcutInfo], input_size: int,
                      num_classes: int) -> int:
    peak, size_in = 0, input_size
    for b in range(4):
        block = [r for r in rows if r.name.startswith(f"c{b + 1}.")]
        sc = shortcuts.get(b)
        x = block[0].cin * size_in * size_in  # the block input: what its shortcut reads at the end
        for i, r in enumerate(block):
            held = x if sc is not None else 0
            peak = max(peak, layer_peak_activations(r.layer, r.cin, size_in, r.size, held, reads_held=i == 0))
            size_in = r.size
        if sc is not None:
            body = block[-1].layer.out * size_in * size_in
            if sc.kind == "projection":  # body first, then conv(x) -> p (x is freed), BN(p) -> p', body + p'
                p_out = sc.cout * sc.size * sc.size
                peak = max(peak, x + body + p_out, body + 2 * p_out)
            else:  # identity: body + x, in place
                peak = max(peak, body + x)
    c, s = rows[-1].layer.out, rows[-1].size
    # the head: global average pooling (c x s^2 -> c), then the classifier (c -> num_classes)
    return max(peak, c * s * s + c, c + num_classes)


def shortcut_params(cin: int, cout: int) -> int:
    """A 1x1 projection: bias-free conv and BN."""
    return cin * cout + 2 * cout


@lru_cache(maxsize=65536)
def analyze(genome: Genome, input_size: int = 32) -> Analysis:
    rows, shortcuts = [], []
    cin, size, rf, jump = genome.in_channels, input_size, 1, 1
    for b, block in enumerate(genome.blocks):
        block_cin, block_rf = cin, rf
        for i, layer in enumerate(block):
            size = -(-size // layer.stride)  # "same" padding: ceil(size / stride)
            rf += (layer.kernel - 1) * layer.dilation * jump
            jump *= layer.stride
            if i == len(block) - 1 and genome.residual[b]:
                rf = max(rf, block_rf)  # the shortcut path: a 1x1 conv (or nothing) with the same stride
            rows.append(LayerInfo(f"c{b + 1}.{i}", layer, cin, size, rf, jump, layer_params(layer, cin),
                                  _layer_macs(layer, cin, size)))
            cin = layer.out
        kind = genome.shortcut(b)
        if kind is not None:
            # a 1x1 stride-s conv without padding gives ceil(size / s), the same size as the body
            p, m = (shortcut_params(block_cin, cin), size * size * block_cin * cin) if kind == "projection" else (0, 0)
            shortcuts.append(ShortcutInfo(f"c{b + 1}.skip", kind, block_cin, cin, genome.block_stride(b), size, rf,
                                          p, m))
    head_params = cin * genome.num_classes + (genome.num_classes if genome.head.bias else 0)
    shortcuts = tuple(shortcuts)
    by_block = {int(sc.name[1]) - 1: sc for sc in shortcuts}
    return Analysis(tuple(rows), head_params, cin * genome.num_classes, input_size,
                    _peak_activations(rows, by_block, input_size, genome.num_classes), shortcuts)
