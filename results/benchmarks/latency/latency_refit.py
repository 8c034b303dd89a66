"""Refit a built table's overhead with this version's train.latency.fit_overhead, from the block and whole-net
measurements the table already holds (no measurement; what `train.latency build` would have written from them).

    python results/benchmarks/latency/latency_refit.py TABLE.json   # rewrites TABLE.json in place
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from space import Genome  # noqa: E402
from train.latency import fit_overhead  # noqa: E402

path = Path(sys.argv[1])
data = json.loads(path.read_text())
genomes = [Genome.from_dict(g) for g in data["calibration"]["genomes"]]
data.update(fit_overhead(data, genomes, data["calibration"]["measured_ms"]))
path.write_text(json.dumps(data, indent=1))
print(path, data["overhead"], data["calibration"]["verdict"])
