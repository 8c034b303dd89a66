"""Standalone PyTorch code for a genome: `python -m space.export SPEC -o FILE.py`.

The file imports only torch, defines `class Net(nn.Module)` from the same module classes that
space.layers builds with (copied verbatim), and annotates every layer with its output size, receptive
field and parameters, so `Net().load_state_dict(build(genome).state_dict(), strict=True)` holds.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from typing import Sequence

from .analysis import analyze
from .genome import Genome, GenomeError
from .layers import Classifier, ConvBN, Projection, Residual, SepConvBN, module_calls
from .rules import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF, Rules, check
from .cli import CliParser, load_spec, run_cli

__all__ = ["export_code", "main"]


def _call(name: str, args: tuple, kwargs: dict) -> str:
    return f"{name}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])})"


def _net_init(blocks, a) -> list[str]:
    """The lines of class Net down to its blocks: one nn.Sequential (or Residual) per block, each layer
    commented with its output shape, RF and parameters (from the analysis `a`)."""
    lines = ["", "class Net(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    infos, shortcuts = iter(a.layers), iter(a.shortcuts)
    for b, (calls, skip) in enumerate(blocks, 1):
        lines.append(f"        self.c{b} = {'nn.Sequential' if skip is None else 'Residual'}(")
        for call in calls:
            info = next(infos)
            lines.append(f"            {_call(*call)},  # {info.name}: out {info.size}x{info.size}x{info.layer.out}, "
                         f"RF {info.rf}, jump {info.jump}, params {info.params:,}")
        if skip is not None:
            s = next(shortcuts)
            lines.append(f"            skip={_call(*skip)},  # {s.name}: {s.kind}, out {s.size}x{s.size}x{s.cout}, "
                         f"params {s.params:,}; block output = layers + skip, RF {s.rf}")
        lines.append("        )")
    return lines


def export_code(genome: Genome, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                max_params: int = DEFAULT_MAX_PARAMS, min_rf: int = DEFAULT_MIN_RF,
                classes: Sequence[str] = ()) -> str:
    """The standalone file; with mean/std (RGB, [0, 1] units) it also records the input normalisation the
    weights were trained with, as MEAN and STD, and with `classes` (one name per output, in label order) the
    class names, as CLASSES."""
    if classes and len(classes) != genome.num_classes:
        raise GenomeError(f"{len(classes)} class names for a net with {genome.num_classes} outputs")
    a = analyze(genome)
    blocks, head = module_calls(genome)
    violations = check(genome, Rules(max_params, min_rf))
    lines = [
        '"""Standalone model exported by tinynas (space.export). Needs only torch.',
        "",
        f"Genome: {genome.summary()}",
        f"Parameters: {a.params:,}   MACs per image: {a.macs:,}   receptive field: {a.rf} px",
        f"Constraints: {'; '.join(violations) if violations else f'all met (<= {max_params:,} parameters, RF >= {min_rf}, DSC, dilation)'}",
        "",
        "    model = Net()",
        "    model.load_state_dict(torch.load('best_model.pt', map_location='cpu', weights_only=True))",
        '"""',
        "import torch",
        "import torch.nn as nn",
        "",
        f"GENOME_JSON = {genome.to_json()!r}",
    ]
    if mean is not None and std is not None:
        lines += ["# Input normalisation used in training: x = (image / 255 - MEAN) / STD per RGB channel,",
                  "# image as float N x 3 x 32 x 32 in 0..255.",
                  f"MEAN = {tuple(round(float(m), 6) for m in mean)}",
                  f"STD = {tuple(round(float(s), 6) for s in std)}"]
    if classes:
        lines += ["# The class of each output, in order: CLASSES[model(x).argmax(1)[i]] names image i's class.",
                  f"CLASSES = {tuple(str(c) for c in classes)!r}"]
    lines += [""]
    residual = any(skip is not None for _, skip in blocks)
    for cls in (ConvBN, SepConvBN, *((Projection, Residual) if residual else ()), Classifier):
        lines += ["", inspect.getsource(cls).rstrip(), ""]
    lines += _net_init(blocks, a)
    lines += [
        f"        self.head = {_call(*head)}  # GAP -> classifier, params {a.head_params:,}",
        "",
        "    def features(self, x: torch.Tensor) -> torch.Tensor:",
        "        return self.c4(self.c3(self.c2(self.c1(x))))",
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "        return self.head(self.features(x))",
        "",
        "",
        "if __name__ == '__main__':",
        "    model = Net()",
        "    n = sum(p.numel() for p in model.parameters() if p.requires_grad)",
        f"    assert n == {a.params}, n",
        "    print(model(torch.zeros(2, 3, 32, 32)).shape, f'{n:,} parameters')",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m space.export", description="Write a genome as standalone PyTorch code.")
    p.add_argument("spec", help="preset name or genome JSON file")
    p.add_argument("-o", "--output", required=True, help="the .py file to write")
    args = p.parse_args(argv)
    genome = load_spec(args.spec)
    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(export_code(genome))
    except OSError as e:
        raise GenomeError(f"cannot write {out}: {e.strerror}") from None
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
