"""Exact, analytic properties of a genome: parameters, MACs, and per-layer size, receptive field and jump.

No model is instantiated. Parameters count what torchsummary counts as trainable: conv and linear
weights and biases, and BatchNorm's weight and bias (2 per channel). MACs are multiply-accumulates per
image of the convs and the classifier (BatchNorm, ReLU and pooling are not counted).

Peak activation memory (`Analysis.peak_activations`, in tensor *elements* per image; x4 for bytes at fp32)
is that of a layer-by-layer executor that frees a tensor as soon as the next op has consumed it, the
figure microcontroller deployment tools call peak SRAM: the maximum over the ops of the forward pass
(each conv, BatchNorm, ReLU, pooling, the classifier) of the elements of the op's input plus its output.
In-place ops (the ReLUs) count their one tensor once. Weights and kernels' scratch space are not included.

Receptive field (RF) and jump follow the usual recurrence along one axis, in input pixels:
    rf_out = rf_in + (k - 1) * dilation * jump_in,    jump_out = jump_in * stride.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .genome import Genome, Layer

__all__ = ["LayerInfo", "Analysis", "analyze", "check", "layer_params", "layer_peak_activations", "DEFAULT_MAX_PARAMS",
           "DEFAULT_MIN_RF"]

DEFAULT_MAX_PARAMS = 200_000
DEFAULT_MIN_RF = 44  # input pixels


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
class Analysis:
    layers: tuple[LayerInfo, ...]
    head_params: int
    head_macs: int
    input_size: int
    peak_activations: int  # elements per image (x4: bytes at fp32), see the module docstring

    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers) + self.head_params

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers) + self.head_macs

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


def layer_peak_activations(layer: Layer, cin: int, size_in: int, size: int) -> int:
    """Largest input + output of one op inside a layer, elements per image (see the module docstring)."""
    a_in, mid, out = cin * size_in * size_in, cin * size * size, layer.out * size * size
    ops = [2 * out]  # BatchNorm: out -> new out (ReLU is in place: one tensor)
    if layer.separable:
        ops += [a_in + mid, mid + out]  # depthwise in -> mid, pointwise mid -> out
        if layer.dw_post:
            ops.append(2 * mid)  # BatchNorm between the two parts
    else:
        ops.append(a_in + out)
    return max(ops)


def _peak_activations(rows: list[LayerInfo], input_size: int, num_classes: int) -> int:
    sizes_in = [input_size] + [r.size for r in rows[:-1]]
    body = max(layer_peak_activations(r.layer, r.cin, s_in, r.size) for r, s_in in zip(rows, sizes_in))
    c, s = rows[-1].layer.out, rows[-1].size
    # the head: global average pooling (c x s^2 -> c), then the classifier (c -> num_classes)
    return max(body, c * s * s + c, c + num_classes)


@lru_cache(maxsize=65536)
def analyze(genome: Genome, input_size: int = 32) -> Analysis:
    rows = []
    cin, size, rf, jump = genome.in_channels, input_size, 1, 1
    for name, layer in genome.named_layers():
        size = -(-size // layer.stride)  # "same" padding: ceil(size / stride)
        rf += (layer.kernel - 1) * layer.dilation * jump
        jump *= layer.stride
        rows.append(LayerInfo(name, layer, cin, size, rf, jump, layer_params(layer, cin), _layer_macs(layer, cin, size)))
        cin = layer.out
    head_params = cin * genome.num_classes + (genome.num_classes if genome.head.bias else 0)
    return Analysis(tuple(rows), head_params, cin * genome.num_classes, input_size,
                    peak_activations=_peak_activations(rows, input_size, genome.num_classes))


def check(genome: Genome, max_params: int = DEFAULT_MAX_PARAMS, min_rf: int = DEFAULT_MIN_RF,
          max_macs: int | None = None) -> list[str]:
    """Readable violations of the rules; an empty list means the genome is feasible. `max_macs` (MACs per
    image) is an optional extra budget: None means no limit."""
    a = analyze(genome)
    violations = []
    if a.params > max_params:
        violations.append(f"{a.params:,} parameters > {max_params:,}")
    if max_macs is not None and a.macs > max_macs:
        violations.append(f"{a.macs:,} MACs > {max_macs:,}")
    if a.rf < min_rf:
        violations.append(f"RF {a.rf} < {min_rf}")
    if not any(l.separable for l in genome.layers):
        violations.append("no depthwise-separable conv")
    if not any(l.dilated for l in genome.layers):
        violations.append("no dilated conv")
    return violations
