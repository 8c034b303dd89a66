"""The Genome: a frozen, hashable description of a C1-C2-C3-C4-Output CNN.

A genome is four blocks of layers plus a head. Everything else (parameter count, MACs, receptive
field, the nn.Module, the exported code) is derived from it, so it is the single source of truth.

Every conv uses "same" padding (dilation * (k - 1) / 2), so a stride-1 layer keeps the resolution and
a stride-2 layer halves it (rounding up). There is no pooling except the global average pool of the head.

A block may be residual (`Genome.residual[b]`): its output is body(x) + shortcut(x), where the shortcut is
the identity when the block keeps channels and resolution, else a 1x1 projection conv (stride = the
block's total stride) followed by BatchNorm. No activation follows the add.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["OPS", "POSTS", "HEADS", "NO_RESIDUAL", "Op", "Layer", "Head", "Genome", "GenomeError"]


class GenomeError(ValueError):
    """A genome (or its JSON) that does not describe a valid network; the message is one line."""


@dataclass(frozen=True)
class Op:
    kernel: int  # pixels, square
    separable: bool  # depthwise k x k then pointwise 1 x 1


# The op registry: unknown keys fail loudly in Layer.__post_init__.
OPS: dict[str, Op] = {
    "conv3": Op(kernel=3, separable=False),
    "conv1": Op(kernel=1, separable=False),
    "dsc3": Op(kernel=3, separable=True),
}
# Order of BatchNorm and ReLU after a conv: the seeds use both.
POSTS = ("bn_relu", "relu_bn")
# Classifier after global average pooling: nn.Linear or a 1x1 nn.Conv2d (same parameters).
HEADS = ("linear", "conv1x1")
NO_RESIDUAL = (False, False, False, False)


@dataclass(frozen=True)
class Layer:
    op: str
    out: int  # output channels
    stride: int = 1  # 1 or 2; on a separable conv it is the depthwise part's
    dilation: int = 1  # on a separable conv it is the depthwise part's
    post: str = "bn_relu"
    dw_post: bool = False  # separable only: BN + ReLU after the depthwise part too (MobileNet style)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise GenomeError(f"unknown op {self.op!r}; known ops: {', '.join(OPS)}")
        if not isinstance(self.out, int) or self.out < 1:
            raise GenomeError(f"layer output channels must be a positive integer, got {self.out!r}")
        if self.stride not in (1, 2):
            raise GenomeError(f"stride must be 1 or 2, got {self.stride!r}")
        if not isinstance(self.dilation, int) or self.dilation < 1:
            raise GenomeError(f"dilation must be a positive integer, got {self.dilation!r}")
        if OPS[self.op].kernel == 1 and self.dilation != 1:
            raise GenomeError(f"a 1x1 conv cannot be dilated (dilation {self.dilation})")
        if self.post not in POSTS:
            raise GenomeError(f"unknown post {self.post!r}; known: {', '.join(POSTS)}")
        if self.dw_post and not OPS[self.op].separable:
            raise GenomeError(f"dw_post is only meaningful for separable ops, not {self.op!r}")

    @property
    def kernel(self) -> int:
        return OPS[self.op].kernel

    @property
    def separable(self) -> bool:
        return OPS[self.op].separable

    @property
    def dilated(self) -> bool:
        return self.dilation > 1

    def short(self) -> str:
        """Compact text such as 'dsc3(64)/s2' or 'conv3(80)@d4': the op (kernel 3 or 1), then its output channels
        in parentheses (not 'conv3x80', which reads like a 3x80 kernel), stride, dilation."""
        s = f"{self.op}({self.out})"
        if self.stride > 1:
            s += f"/s{self.stride}"
        if self.dilation > 1:
            s += f"@d{self.dilation}"
        return s


@dataclass(frozen=True)
class Head:
    kind: str = "linear"
    bias: bool = True
    dropout: float = 0.0  # probability, applied to the pooled features

    def __post_init__(self) -> None:
        if self.kind not in HEADS:
            raise GenomeError(f"unknown head {self.kind!r}; known: {', '.join(HEADS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise GenomeError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class Genome:
    blocks: tuple[tuple[Layer, ...], ...]  # exactly four: C1, C2, C3, C4
    head: Head = field(default_factory=Head)
    num_classes: int = 10
    in_channels: int = 3
    residual: tuple[bool, ...] = NO_RESIDUAL  # per block C1..C4: a shortcut around the block, added to its output

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples, so the genome stays hashable.
        blocks = tuple(tuple(b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)
        if len(blocks) != 4:
            raise GenomeError(f"a genome has exactly 4 blocks (C1..C4), got {len(blocks)}")
        try:
            residual = tuple(self.residual)
        except TypeError:
            residual = ()
        if len(residual) != 4 or not all(isinstance(r, bool) for r in residual):
            raise GenomeError(f"residual is 4 booleans (one per block C1..C4), got {self.residual!r}")
        object.__setattr__(self, "residual", residual)
        for i, block in enumerate(blocks, 1):
            if not block:
                raise GenomeError(f"block C{i} is empty")
            for layer in block:
                if not isinstance(layer, Layer):
                    raise GenomeError(f"block C{i} holds {type(layer).__name__}, not Layer")
        if self.num_classes < 2 or self.in_channels < 1:
            raise GenomeError("num_classes must be >= 2 and in_channels >= 1")

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for block in self.blocks for layer in block)

    @property
    def out_channels(self) -> int:
        return self.blocks[-1][-1].out

    def block_inputs(self) -> list[int]:
        """Input channels of each block C1..C4."""
        return [self.in_channels] + [block[-1].out for block in self.blocks[:-1]]

    def block_stride(self, b: int) -> int:
        """Total stride of block b (0-based): the product of its layers' strides."""
        stride = 1
        for layer in self.blocks[b]:
            stride *= layer.stride
        return stride

    def shortcut(self, b: int) -> str | None:
        """Block b's (0-based) shortcut: None (plain block), "identity" or "projection"."""
        if not self.residual[b]:
            return None
        same = self.block_inputs()[b] == self.blocks[b][-1].out and self.block_stride(b) == 1
        return "identity" if same else "projection"

    def summary(self) -> str:
        """One line, e.g. 'C1[conv3(24) conv3(32)/s2] C2[...] ... O[linear]'."""
        parts = [f"C{b}[{' '.join(l.short() for l in block)}{' +skip' if r else ''}]"
                 for b, (block, r) in enumerate(zip(self.blocks, self.residual), 1)]
        head = self.head.kind + (f" drop{self.head.dropout:g}" if self.head.dropout else "")
        return " ".join(parts) + f" O[{head}]"

    # JSON: human-readable; fields at their default are left out of layers to keep lines short.
    def to_dict(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(Layer)}

        def layer_dict(layer: Layer) -> dict[str, Any]:
            d = asdict(layer)
            return {k: v for k, v in d.items() if k in ("op", "out") or v != defaults[k]}

        d = {
            "blocks": [[layer_dict(l) for l in block] for block in self.blocks],
            "head": asdict(self.head),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }
        if self.residual != NO_RESIDUAL:  # left out at its default: older genomes' JSON stays the same
            d["residual"] = list(self.residual)
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "Genome":
        if not isinstance(d, dict) or "blocks" not in d:
            raise GenomeError("a genome is a JSON object with a 'blocks' list of 4 layer lists")
        unknown = set(d) - {"blocks", "head", "num_classes", "in_channels", "residual"}
        if unknown:
            raise GenomeError(f"unknown genome keys: {', '.join(sorted(unknown))}")
        try:
            blocks = [[Layer(**layer) for layer in block] for block in d["blocks"]]
            head = Head(**d.get("head", {}))
            return cls(blocks=blocks, head=head, num_classes=int(d.get("num_classes", 10)),
                       in_channels=int(d.get("in_channels", 3)), residual=d.get("residual", NO_RESIDUAL))
        except TypeError as e:  # wrong keys or non-iterables inside blocks/head
            raise GenomeError(f"malformed genome: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "Genome":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenomeError(f"invalid JSON: {e}") from None
        return cls.from_dict(d)
