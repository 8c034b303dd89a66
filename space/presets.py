"""The seed nets of ../shared/seeds as points in the space, reproduced layer by layer.

Each preset's analytic and built parameter counts equal the totals published in its seed document
(tests/test_presets.py checks both).
"""
from __future__ import annotations

from .genome import Genome, GenomeError, Head, Layer

__all__ = ["PRESETS", "get_preset"]


def _l(op: str, out: int, stride: int = 1, dilation: int = 1) -> Layer:
    return Layer(op, out, stride, dilation)


PRESETS: dict[str, Genome] = {
    # 003_d36f90de2825472b.txt, "Net": three stride-2 downsamples, one dilated DSC in C4.
    # 84,322 parameters, RF 55.
    "seed003_net": Genome(
        blocks=(
            (_l("conv3", 24), _l("conv3", 32), _l("conv3", 48, stride=2)),
            (_l("dsc3", 64), _l("dsc3", 80, stride=2)),
            (_l("conv1", 96), _l("dsc3", 112, stride=2)),
            (_l("dsc3", 128, dilation=2), _l("conv1", 128)),
        ),
        head=Head("linear", bias=True),
    ),
    # Same file, "NetDilated": no stride at all; RF grown by dilations 2 -> 4 -> 8. 197,858 parameters, RF 45.
    "seed003_dilated": Genome(
        blocks=(
            (_l("conv3", 24), _l("conv3", 32)),
            (_l("dsc3", 48, dilation=2), _l("conv1", 48), _l("conv3", 64, dilation=2)),
            (_l("conv1", 80), _l("conv3", 80, dilation=4), _l("conv3", 96, dilation=4)),
            (_l("dsc3", 112, dilation=8), _l("conv1", 112)),
        ),
        head=Head("linear", bias=True),
    ),
    # 001_3cc2bce34533d90f.txt: a conv stem, then depthwise-separable pairs whose second member strides;
    # the last pair dilates instead. 1x1 conv classifier with bias. 155,434 parameters, RF 79.
    "seed001": Genome(
        blocks=(
            (_l("conv3", 32), _l("dsc3", 32), _l("dsc3", 64, stride=2)),
            (_l("dsc3", 64), _l("dsc3", 128, stride=2)),
            (_l("dsc3", 128), _l("dsc3", 192, stride=2)),
            (_l("dsc3", 192), _l("dsc3", 256, dilation=2)),
        ),
        head=Head("conv1x1", bias=True),
    ),
}


def get_preset(name: str) -> Genome:
    try:
        return PRESETS[name]
    except KeyError:
        raise GenomeError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
