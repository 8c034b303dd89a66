"""`python -m space.describe SPEC [--json] [--latency-table FILE]`: the per-layer table, totals and rule
violations of a genome; with a latency table (train.latency), each layer's predicted milliseconds on its
target too."""
from __future__ import annotations

import json

from .analysis import Analysis, analyze
from .genome import Genome, GenomeError
from .latency import LatencyError, LatencyTable, Prediction, predict_latency
from .rules import Rules, RulesError, add_rule_flags, check, rules_from_args
from .cli import CliParser, load_spec, run_cli

__all__ = ["describe", "table", "main"]


def table(genome: Genome, a: Analysis | None = None, latency: Prediction | None = None) -> str:
    """The per-layer table as fixed-width text (also used in reports); with a latency prediction, a last
    column of predicted milliseconds per layer (its share of the per-element overhead included)."""
    a = a or analyze(genome)
    rows = [("layer", "op", "in->out", "k", "s", "d", "size", "RF", "jump", "params", "MACs")]
    rows = _table_rows(genome, a, rows)
    if latency is not None:
        ms = {l.name: f"{l.ms:.4f}" for l in latency.layers}
        rows = [rows[0] + ("ms",)] + [r + (ms.get(r[0], ""),) for r in rows[1:]]
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    out = ["  ".join(str(v).rjust(w) if c >= 3 else str(v).ljust(w) for c, (v, w) in enumerate(zip(r, widths)))
           for r in rows]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def _table_rows(genome: Genome, a: Analysis, rows: list[tuple]) -> list[tuple]:
    skips = {s.name.split(".")[0]: s for s in a.shortcuts}
    for n, i in enumerate(a.layers):
        l = i.layer
        rows.append((i.name, l.op, f"{i.cin}->{l.out}", l.kernel, l.stride, l.dilation, f"{i.size}x{i.size}",
                     i.rf, i.jump, f"{i.params:,}", f"{i.macs:,}"))
        block = i.name.split(".")[0]
        s = skips.get(block)
        if s is not None and (n + 1 == len(a.layers) or a.layers[n + 1].name.split(".")[0] != block):
            rows.append((s.name, f"+{s.kind}", f"{s.cin}->{s.cout}", 1 if s.kind == "projection" else "",
                         s.stride, "", f"{s.size}x{s.size}", s.rf, i.jump, f"{s.params:,}", f"{s.macs:,}"))
    rows.append(("head", f"gap+{genome.head.kind}", f"{genome.out_channels}->{genome.num_classes}", "", "", "", "1x1",
                 "", "", f"{a.head_params:,}", f"{a.head_macs:,}"))
    return rows


def describe(genome: Genome, rules: Rules = Rules()) -> dict:
    a = analyze(genome)
    d = _describe(genome, rules, a)
    if rules.latency is not None:
        p = predict_latency(genome, rules.latency)
        d["latency"] = {"runtime": rules.latency.runtime, "threads": rules.latency.threads,
                        "machine": rules.latency.machine, "scale": rules.latency.scale, "ms": p.ms, "fixed_ms": p.fixed_ms,
                        "layers": {l.name: l.ms for l in p.layers}, "notes": list(p.notes)}
    return d


def _describe(genome: Genome, rules: Rules, a: Analysis) -> dict:
    return {
        "summary": genome.summary(),
        "params": a.params,
        "macs": a.macs,
        "rf": a.rf,
        "final_size": a.final_size,
        "peak_activations": a.peak_activations,  # elements per image; x4 for bytes at fp32
        "violations": check(genome, rules),
        "layers": [{"name": i.name, "op": i.layer.op, "cin": i.cin, "cout": i.layer.out, "stride": i.layer.stride,
                    "dilation": i.layer.dilation, "size": i.size, "rf": i.rf, "jump": i.jump, "params": i.params,
                    "macs": i.macs} for i in a.layers],
        "shortcuts": [{"name": s.name, "kind": s.kind, "cin": s.cin, "cout": s.cout, "stride": s.stride, "size": s.size,
                       "rf": s.rf, "params": s.params, "macs": s.macs} for s in a.shortcuts],
        "genome": genome.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m space.describe", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("spec", help="preset name or genome JSON file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_rule_flags(p)
    args = p.parse_args(argv)
    rules = rules_from_args(args)
    genome = load_spec(args.spec)
    d = describe(genome, rules)
    if args.json:
        print(json.dumps(d))
        return 0
    print(genome.summary())
    prediction = predict_latency(genome, rules.latency) if rules.latency is not None else None
    print(table(genome, latency=prediction))
    print(f"total: {d['params']:,} parameters, {d['macs'] / 1e6:.2f} M MACs per image, RF {d['rf']}, "
          f"final map {d['final_size']}x{d['final_size']}")
    peak = d["peak_activations"]
    print(f"peak activations: {peak:,} elements per image ({peak * 4 / 1024:,.0f} KiB at fp32; the largest input + "
          "output of one op)")
    if prediction is not None:
        t = rules.latency
        print(f"predicted latency: {prediction.ms:.3f} ms per image at batch 1 ({t.runtime}, {t.threads} thread(s) "
              f"on {t.machine}{f', rescaled by {t.scale:.3f} for this machine' if t.scale != 1 else ''}; "
              f"{prediction.fixed_ms:.3f} ms of it fixed per inference)"
              + (f"; approximated: {'; '.join(prediction.notes)}" if prediction.notes else ""))
    print("violations: " + ("; ".join(d["violations"]) if d["violations"] else "none (feasible)"))
    return 0


if __name__ == "__main__":
    run_cli(main, (GenomeError, RulesError, LatencyError))
