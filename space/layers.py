"""Rendering a genome as an nn.Module.

The module classes below import only torch and are copied verbatim into exported code (space.export),
so a built model and its exported twin have identical submodule names and state_dict keys.
`module_calls` is the one description both renderers use: per block, the constructor calls of its layers and,
for a residual block, of its shortcut. A plain block is an nn.Sequential, a residual one a `Residual` whose
layers keep the Sequential's names ("0", "1", ...) next to "skip".
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .genome import Genome

__all__ = ["ConvBN", "SepConvBN", "Projection", "Residual", "Classifier", "GenomeNet", "build", "module_calls",
           "BlockCalls"]


class ConvBN(nn.Module):
    """k x k conv (no bias, "same" padding) followed by BatchNorm and ReLU in the given order."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, post: str = "bn_relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.bn_first = post == "bn_relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x)) if self.bn_first else self.bn(self.act(x))


class SepConvBN(nn.Module):
    """Depthwise k x k conv, then pointwise 1 x 1 conv, then BatchNorm and ReLU in the given order."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, post: str = "bn_relu",
                 dw_post: bool = False):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation, groups=cin,
                            bias=False)
        # MobileNet puts BN + ReLU between the two parts; the seeds feed the depthwise output straight on.
        self.dw_bn = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True)) if dw_post else nn.Identity()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.bn_first = post == "bn_relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw_bn(self.dw(x)))
        return self.act(self.bn(x)) if self.bn_first else self.bn(self.act(x))


class Projection(nn.Module):
    """The shortcut of a residual block that changes channels or resolution: 1 x 1 conv (no bias), BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A strided 1 x 1 conv is a subsampling then a 1 x 1 conv (ceil(size / stride) pixels either way). Done
        # as such because torch 2.13's CPU backward of a stride-2 1 x 1 conv on 3-channel channels_last input
        # corrupts the heap ("double free or corruption"), which a residual C1 hits.
        return self.bn(self.conv(x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x))


class Residual(nn.Module):
    """The layers in sequence (named "0", "1", ... as in nn.Sequential), plus `skip` applied to the input."""

    def __init__(self, *layers: nn.Module, skip: nn.Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.n = len(layers)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i in range(self.n):
            y = self._modules[str(i)](y)
        return y + self.skip(x)


class Classifier(nn.Module):
    """Global average pooling, dropout, then a Linear or 1 x 1 conv classifier."""

    def __init__(self, cin: int, num_classes: int, kind: str = "linear", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.kind = kind
        self.fc = nn.Linear(cin, num_classes, bias=bias) if kind == "linear" else nn.Conv2d(cin, num_classes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.gap(x))
        return self.fc(x.flatten(1)) if self.kind == "linear" else self.fc(x).flatten(1)


Call = tuple[str, tuple, dict]  # (class name, args, kwargs)
BlockCalls = tuple[list[Call], Optional[Call]]  # the layers' calls; the shortcut's call, None for a plain block


def module_calls(genome: Genome) -> tuple[list[BlockCalls], Call]:
    """(blocks, head): per block its layers' calls and its shortcut's call (None: plain block), the head's call."""
    blocks, cin = [], genome.in_channels
    for b, block in enumerate(genome.blocks):
        block_cin, calls = cin, []
        for layer in block:
            kwargs = {"k": layer.kernel, "stride": layer.stride, "dilation": layer.dilation, "post": layer.post}
            if layer.separable:
                calls.append(("SepConvBN", (cin, layer.out), {**kwargs, "dw_post": layer.dw_post}))
            else:
                calls.append(("ConvBN", (cin, layer.out), kwargs))
            cin = layer.out
        kind = genome.shortcut(b)
        skip = (None if kind is None else ("nn.Identity", (), {}) if kind == "identity"
                else ("Projection", (block_cin, cin), {"stride": genome.block_stride(b)}))
        blocks.append((calls, skip))
    h = genome.head
    head = ("Classifier", (cin, genome.num_classes), {"kind": h.kind, "bias": h.bias, "dropout": h.dropout})
    return blocks, head


_CLASSES = {"ConvBN": ConvBN, "SepConvBN": SepConvBN, "Projection": Projection, "Classifier": Classifier,
            "nn.Identity": nn.Identity}


def _block(calls: list[Call], skip: Call | None) -> nn.Module:
    layers = [_CLASSES[n](*a, **kw) for n, a, kw in calls]
    if skip is None:
        return nn.Sequential(*layers)
    n, a, kw = skip
    return Residual(*layers, skip=_CLASSES[n](*a, **kw))


class GenomeNet(nn.Module):
    def __init__(self, genome: Genome):
        super().__init__()
        self.genome = genome
        blocks, (name, args, kwargs) = module_calls(genome)
        self.c1, self.c2, self.c3, self.c4 = (_block(calls, skip) for calls, skip in blocks)
        self.head = _CLASSES[name](*args, **kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The C4 feature map, before global pooling."""
        return self.c4(self.c3(self.c2(self.c1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(genome: Genome, seed: int | None = None) -> GenomeNet:
    """A freshly initialised model on the CPU; move it to any device.

    With a seed the weights are reproducible and torch's global RNG is left untouched; without one,
    initialisation draws from the global RNG like any nn.Module constructor.
    """
    if seed is None:
        return GenomeNet(genome)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GenomeNet(genome)
