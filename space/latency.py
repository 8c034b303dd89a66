"""A latency table for one target (runtime, threads, batch 1, machine) and the prediction it gives a genome.

The table is a JSON file written by `python -m train.latency build` on the target. It holds the measured
milliseconds of the building blocks the space produces, each keyed by what changes its kernel:
    conv3/s{stride}/d{dilation}/{input size}   a 3x3 conv + BN + ReLU, over a grid of (cin, cout)
    dw3/s{stride}/d{dilation}/{input size}     the depthwise 3x3 part of a separable conv, over cin
    pw/{size}                                  a 1x1 conv + BN + ReLU (a separable conv's pointwise part, a
                                               conv1 layer), over (cin, cout)
    proj/s{stride}/{input size}                a residual block's projection shortcut, over (cin, cout)
    add/{size}                                 a residual block's add, over channels
    head/{size}                                global average pooling + the classifier, over cin
    fallback/KEY (int8 tables)                 KEY's block as ONNX Runtime runs it where its int8 fusion does
                                               not apply: dequantized weights and a float conv (_falls_back)
Between grid points the figure is interpolated (bilinear over (cin, cout), linear over one width), the widths
first rounded up to the channel step the runtime computes in (`channel_step`, measured by the build). Each
block was measured alone, so each carries the runtime's per-call cost (and, for int8, the quantize/dequantize
of its input and output, and layout transposes) that a whole net pays once per chain; the build therefore also
measures 60 whole sampled nets (40 under the default rules, 20 under a 20 M MACs cap) and fits `overhead` by
least squares: net = fixed_ms + sum over blocks of (block ms + per_block_ms, or per_fallback_ms for a fallback
block) + per_kelem_ms * thousands of elements read and written between blocks + per_kelem32_ms * those of them
read and written by layers and shortcuts with a 32x32 output. Pure Python: no torch, no measurement here (that
is train.latency).
"""
from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis import analyze
from .genome import Genome

__all__ = ["FORMAT", "FORMAT_VERSION", "BLOCKS_VERSION", "RUNTIMES", "LatencyError", "LatencyTable", "Prediction",
           "LayerLatency", "FALLBACK", "ODD8", "OVERHEAD_TERMS", "BIG_SIZE", "block_key", "block_keys",
           "overhead_features", "load_table",
           "predict_latency"]

FORMAT = "tinynas-latency-table"
FORMAT_VERSION = 1  # the JSON layout
BLOCKS_VERSION = 2  # what the blocks are (their modules and keys): a table of another version is rebuilt
RUNTIMES = ("onnxruntime-int8", "onnxruntime-fp32", "torch-cpu")


class LatencyError(ValueError):
    """A latency table that is missing, corrupt, foreign or of another runtime/version; one line."""


@dataclass(frozen=True)
class LayerLatency:
    name: str  # "c2.1", "c2.skip", "head"
    ms: float  # predicted milliseconds, overhead share included
    blocks: tuple[str, ...]  # the table keys it was read from


@dataclass(frozen=True)
class Prediction:
    ms: float  # the whole net, batch 1
    fixed_ms: float  # of which the per-inference fixed cost
    layers: tuple[LayerLatency, ...]
    notes: tuple[str, ...] = ()  # parts outside the table (approximated), if any


@dataclass(eq=False)
class LatencyTable:
    """A loaded table; equal to another when their contents are (compared by digest)."""

    data: dict[str, Any]
    source: str = ""  # the file it was read from
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyTable) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"LatencyTable({self.runtime}, {self.threads} thread(s) on {self.machine}, {self.digest})"

    @property
    def runtime(self) -> str:
        return self.data["runtime"]

    @property
    def threads(self) -> int:
        return self.data["threads"]

    @property
    def machine(self) -> str:
        return self.data["machine"]["cpu"]

    @property
    def scale(self) -> float:
        """The factor its predictions are multiplied by: 1, or the ratio a --latency-rescale measured on
        another machine of the same CPU name (space.machine.rescaled, recorded under "rescale")."""
        return float(self.data.get("rescale", {}).get("ratio", 1.0))

    @property
    def base_digest(self) -> str:
        """The digest of the table as built (without a rescale): two rescales of one table share it."""
        return LatencyTable({k: v for k, v in self.data.items() if k != "rescale"}).digest

    @property
    def verdict(self) -> dict[str, Any]:
        """What the build found on its calibration nets: the table's and MACs' errors (see train.latency)."""
        return self.data.get("calibration", {}).get("verdict", {})

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def channel_step(self, key: str) -> int:
        """The channel granularity the runtime computes `key` in (train.latency measures it): ONNX Runtime's
        fp32 convs on AVX-512 run in blocks of 16 channels, so 72 channels cost what 80 do."""
        steps = self.data.get("channel_step", {})
        return max(((p, v) for p, v in steps.items() if key.startswith(p)), key=lambda pv: len(pv[0]),
                   default=("", 1))[1]

    def lookup(self, key: str, cin: int, cout: int | None = None) -> tuple[float, bool]:
        """(ms, exact): the interpolated figure of block `key` at these widths; exact False when the key or
        the widths lie outside the table (then nearest key/point, scaled by the work)."""
        entry = self.data["entries"].get(key)
        exact = entry is not None
        step = self.channel_step(key)
        if entry is None:
            entry, scale = _nearest_key(self.data["entries"], key)
        else:
            scale = 1.0
        if cout is None:
            xs, ys = _odd8_class(entry, cin) if entry.get(ODD8) else (entry["cin"], entry["ms"])
            return scale * _interp1(xs, ys, _padded(xs, cin, step)), exact
        value, inside = _interp2(entry, _padded(entry["cin"], cin, step), _padded(entry["cout"], cout, step))
        return scale * value, exact and inside


ODD8 = "odd8"  # an entry whose widths that are odd multiples of 8 run on another (slower) path: train.latency


def _odd8_class(entry: dict[str, Any], cin: int) -> tuple[list[int], list[float]]:
    """The points of an ODD8 entry in cin's class: widths that are odd multiples of 8 (24, 40, 72, ...) or the
    others; the widths 8 and below belong to both (ONNX Runtime's int8 depthwise conv computes 16 channels at
    a time, and a remainder of 8 takes ~2x as long as a full 16: 72 channels cost more than 80)."""
    odd = cin % 16 == 8 and cin > 8
    pts = [(x, y) for x, y in zip(entry["cin"], entry["ms"]) if x <= 8 or (x % 16 == 8) == odd]
    return [x for x, _ in pts], [y for _, y in pts]


def _padded(xs: list[int], x: int, step: int) -> int:
    """x rounded up to the runtime's channel step, where that stays within x's grid cell (a grid point, like
    the first conv's 3 input channels, is its own measurement)."""
    if step <= 1 or x in xs or x <= xs[0] or x >= xs[-1]:
        return x
    return min(-(-x // step) * step, xs[bisect_right(xs, x)])


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = bisect_right(xs, x) - 1
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return max(ys[i] + t * (ys[i + 1] - ys[i]), 0.0)


def _cell(xs: list[int], x: float) -> int:
    if x <= xs[0]:
        return 0
    if x >= xs[-1]:
        return len(xs) - 2
    return bisect_right(xs, x) - 1


def _interp2(entry: dict[str, Any], cin: int, cout: int) -> tuple[float, bool]:
    """Bilinear over the (cin, cout) grid (None: a point not measured, beyond the parameter cap of the
    build); (value, inside: all four corners measured and the point within the grid)."""
    xs, ys, ms = entry["cin"], entry["cout"], entry["ms"]
    i, j = _cell(xs, cin), _cell(ys, cout)
    corners = [ms[i][j], ms[i + 1][j], ms[i][j + 1], ms[i + 1][j + 1]]
    inside = xs[0] <= cin <= xs[-1] and ys[0] <= cout <= ys[-1]
    if any(c is None for c in corners):  # the nearest measured point, scaled by cin * cout
        _, a, b = min((abs(xs[p] - cin) + abs(ys[q] - cout), p, q) for p in range(len(xs)) for q in range(len(ys))
                      if ms[p][q] is not None)
        return ms[a][b] * cin * cout / (xs[a] * ys[b]), False
    t, u = (cin - xs[i]) / (xs[i + 1] - xs[i]), (cout - ys[j]) / (ys[j + 1] - ys[j])
    v = (corners[0] * (1 - t) * (1 - u) + corners[1] * t * (1 - u) + corners[2] * (1 - t) * u
         + corners[3] * t * u)
    return max(v, 0.0), inside


def _nearest_key(entries: dict[str, Any], key: str) -> tuple[dict[str, Any], float]:
    """A key the table lacks: the same kind at the nearest size (scaled by pixels), else any of the kind."""
    kind, *_, size = key.split("/")
    size_n = int(size)
    same = [k for k in entries if k.split("/")[:-1] == key.split("/")[:-1]]
    pool = same or [k for k in entries if k.startswith(kind + "/")]
    if not pool:
        raise LatencyError(f"the latency table has no {kind} blocks; rebuild it with python -m train.latency build")
    best = min(pool, key=lambda k: abs(int(k.split("/")[-1]) - size_n))
    return entries[best], (size_n / int(best.split("/")[-1])) ** 2


MIN_MS = 0.001  # no net runs in under a microsecond: the floor of a prediction whose fitted terms overshoot
FALLBACK = "fallback/"  # int8 tables: a block as ONNX Runtime runs it where its int8 fusion does not apply


def _fans(a) -> dict[str, tuple[bool, bool]]:
    """Per layer name of analysis `a`: (its input also feeds a residual shortcut, its output also does: the
    next block's)."""
    blocks = [info.name.split(".")[0] for info in a.layers]
    skip = {s.name.split(".")[0] for s in a.shortcuts}
    out = {}
    for n, info in enumerate(a.layers):
        b = blocks[n]
        first, last = n == 0 or blocks[n - 1] != b, n + 1 == len(blocks) or blocks[n + 1] != b
        out[info.name] = (first and b in skip, last and n + 1 < len(blocks) and blocks[n + 1] in skip and b not in skip)
    return out


def _falls_back(key: str, separable: bool, fan_in: bool, fan_out: bool) -> bool:
    """Whether ONNX Runtime runs this part of an int8 net in fp32 (dequantized weights, a float conv): its
    QDQ fusion skips a conv whose input or output tensor also feeds a residual shortcut (checked on the
    optimized graphs of 50 sampled nets, results/benchmarks/latency/latency_cpu.md). A separable conv's depthwise
    part sees its input, the pointwise part its output; a stride-2 projection reads a strided slice of its
    input, which is quantized on its own, so only stride-1 projections fall back."""
    if key.startswith("proj/"):
        return key.startswith("proj/s1/")
    if key.startswith("dw3/"):
        return fan_in
    if key.startswith("pw/") and separable:
        return fan_out
    return key.startswith(("conv3/", "pw/")) and (fan_in or fan_out)


def block_key(kind: str, size: int, stride: int = 1, dilation: int = 1) -> str:
    """The table key of a block (the module docstring's list): its kind, what else changes its kernel (stride
    and dilation of a 3x3 conv, stride of a projection) and its input size. The one place the key is written:
    the build (train.latency) names its entries with it, and block_keys looks them up with it."""
    if kind in ("conv3", "dw3"):
        return f"{kind}/s{stride}/d{dilation}/{size}"
    if kind == "proj":
        return f"proj/s{stride}/{size}"
    if kind in ("pw", "add", "head"):
        return f"{kind}/{size}"
    raise ValueError(f"unknown block kind {kind!r}")


def block_keys(genome: Genome, int8: bool = False) -> list[tuple[str, list[tuple[str, int, int | None]], int]]:
    """Per layer, shortcut and head: (name, [(table key, cin, cout or None)], thousands of elements it reads
    and writes between blocks). The one place that maps a genome onto the table's blocks; with `int8`, the
    parts ONNX Runtime leaves in fp32 are keyed FALLBACK + key (_falls_back)."""
    a = analyze(genome)
    out, size_in = [], a.input_size
    skips = {s.name.split(".")[0]: s for s in a.shortcuts}
    fans = _fans(a)
    for n, info in enumerate(a.layers):
        layer, size = info.layer, info.size
        io = info.cin * size_in * size_in + layer.out * size * size
        if layer.separable:
            parts = [(block_key("dw3", size_in, layer.stride, layer.dilation), info.cin, None),
                     (block_key("pw", size), info.cin, layer.out)]
            io += info.cin * size * size * 2  # the depthwise output, written and read
        elif layer.kernel == 1:
            parts = [(block_key("pw", size), info.cin, layer.out)]
        else:
            parts = [(block_key("conv3", size_in, layer.stride, layer.dilation), info.cin, layer.out)]
        if int8:
            parts = [(FALLBACK + k if _falls_back(k, layer.separable, *fans[info.name]) else k, ci, co)
                     for k, ci, co in parts]
        out.append((info.name, parts, io))
        block = info.name.split(".")[0]
        s = skips.get(block)
        last = n + 1 == len(a.layers) or a.layers[n + 1].name.split(".")[0] != block
        if s is not None and last:
            parts = [(block_key("add", s.size), s.cout, None)]
            sin = s.size * s.stride
            io = 2 * s.cout * s.size * s.size
            if s.kind == "projection":
                key = block_key("proj", min(32, sin), s.stride)
                key = FALLBACK + key if int8 and _falls_back(key, False, True, False) else key
                parts.insert(0, (key, s.cin, s.cout))
                io += s.cin * sin * sin + s.cout * s.size * s.size
            out.append((s.name, parts, io))
        size_in = size
    out.append(("head", [(block_key("head", a.final_size), genome.out_channels, None)],
                genome.out_channels * a.final_size ** 2))
    return [(name, parts, io // 1000) for name, parts, io in out]


# The overhead model's terms (train.latency fits them on whole nets): per inference, per block measured in
# int8, per block measured as a fallback, per thousand elements read and written between blocks, and per
# thousand of those read and written by a layer or shortcut with a 32x32 output. The last is its own term
# because one per-element coefficient left nets with most of their elements at 32x32 (small nets under a
# MACs cap) and nets with most at 16x16 and below (the default rules) biased in opposite directions for fp32:
# +4.6 % and -3.5 % median on held-out sets of each (issue 47, results/benchmarks/latency_unseen); a table
# fitted before it has no such term and predicts as it did (0).
OVERHEAD_TERMS = ("fixed_ms", "per_block_ms", "per_fallback_ms", "per_kelem_ms", "per_kelem32_ms")
BIG_SIZE = 32  # pixels a side: the output size whose elements per_kelem32_ms counts


def overhead_features(genome: Genome, int8: bool) -> list[tuple[str, list[tuple[str, int, int | None]], list[float]]]:
    """Per layer: (name, parts, [1 if it is the head else 0, plain parts, fallback parts, kelem, kelem if its
    output is BIG_SIZE x BIG_SIZE else 0]): the terms of OVERHEAD_TERMS this layer contributes (the fixed
    cost is booked on the head; the head's elements count as kelem only)."""
    a = analyze(genome)
    sizes = {**{i.name: i.size for i in a.layers}, **{s.name: s.size for s in a.shortcuts}}
    out = []
    for name, parts, kelem in block_keys(genome, int8):
        fb = sum(k.startswith(FALLBACK) for k, _, _ in parts)
        big = float(kelem) if sizes.get(name) == BIG_SIZE else 0.0
        out.append((name, parts, [0.0, float(len(parts) - fb), float(fb), float(kelem), big]))
    return out


def predict_latency(genome: Genome, table: LatencyTable) -> Prediction:
    """The predicted latency of `genome` at batch 1 on the table's target: per block the interpolated
    figure plus its share of the fitted overhead (OVERHEAD_TERMS), plus the fixed cost (module docstring), all
    times the table's rescale (1 unless --latency-rescale measured this machine's speed: space.machine)."""
    over, scale = table.data.get("overhead", {}), table.scale
    coef = [float(over.get(t, 0.0)) * scale for t in OVERHEAD_TERMS]
    layers, notes = [], []
    for name, parts, feats in overhead_features(genome, table.runtime == "onnxruntime-int8"):
        ms = sum(c * f for c, f in zip(coef[1:], feats[1:]))
        for key, cin, cout in parts:
            value, exact = table.lookup(key, cin, cout)
            ms += value * scale
            if not exact:
                notes.append(f"{name}: {key} at {cin}" + (f"x{cout}" if cout else "") + " outside the table")
        layers.append(LayerLatency(name, max(ms, 0.0), tuple(k for k, _, _ in parts)))
    a = analyze(genome)
    for info in a.layers:
        if info.layer.post != "bn_relu" or info.layer.dw_post:
            notes.append(f"{info.name}: post {info.layer.post}{' with dw_post' if info.layer.dw_post else ''} "
                         "approximated by bn_relu")
    if genome.num_classes != 10 or genome.head.kind != "linear":
        notes.append("head: measured with a linear classifier to 10 classes")
    total = max(coef[0] + sum(l.ms for l in layers), MIN_MS)
    return Prediction(total, total - sum(l.ms for l in layers), tuple(layers), tuple(notes))


def load_table(path: str | Path, runtime: str | None = None) -> LatencyTable:
    """The table in `path`, checked: LatencyError (one line) if it is missing, not JSON, not a latency table,
    of another layout or block version, or (when `runtime` is given) of another runtime."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyError(f"{path}: no such latency table; build one with python -m train.latency build") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LatencyError(f"{path}: cannot read it ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise LatencyError(f"{path}: not a latency table (invalid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LatencyError(f"{path}: not a latency table (no \"format\": \"{FORMAT}\"); build one with "
                           "python -m train.latency build")
    return table_from_dict(data, str(path), runtime)


def table_from_dict(data: dict[str, Any], source: str = "the latency table", runtime: str | None = None
                    ) -> LatencyTable:
    """As load_table, from the parsed JSON (e.g. as stored with a study)."""
    if data.get("version") != FORMAT_VERSION or data.get("blocks_version") != BLOCKS_VERSION:
        raise LatencyError(f"{source}: layout {data.get('version')} / blocks {data.get('blocks_version')}, this "
                           f"version reads layout {FORMAT_VERSION} / blocks {BLOCKS_VERSION}; rebuild it with "
                           "python -m train.latency build")
    try:
        entries, rt = data["entries"], data["runtime"]
        ok = (isinstance(entries, dict) and entries and rt in RUNTIMES and isinstance(data["threads"], int)
              and isinstance(data["machine"]["cpu"], str)
              and all(isinstance(e["ms"], list) and len(e["ms"]) == len(e["cin"]) for e in entries.values()))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise LatencyError(f"{source}: a corrupt latency table (entries, runtime, threads or machine missing or "
                           "malformed); build it again")
    if runtime is not None and rt != runtime:
        raise LatencyError(f"{source} was measured with {rt}, not {runtime}; build a table for {runtime}")
    return LatencyTable(data, source)
