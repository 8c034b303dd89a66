"""Issue 43, part 4: the measured int8 (and fp32) latency of every net in a final table, through the deploy step.

    python results/benchmarks/payoff/deploy_latency.py STORAGE STUDY OUT DATA_DIR [SEED]
    e.g. python results/benchmarks/payoff/deploy_latency.py sqlite:///results/benchmarks/payoff/cifar10-tpe-100.db \\
        cifar10-tpe-100 results/benchmarks/payoff/cifar10-tpe-100 /work/data/cifar10

For each net retrained into OUT/runs/ (search.seedrun.retrain's cache: the winner, every --compare baseline)
at SEED (default: the study's seed, whose weights the final retrain exports), the final retrain's own
deploy step (train.deploy.deploy: export_onnx, verify, quantize_int8 calibrated on 512 training images,
ONNX Runtime on the test set, latency at batch 1 with one thread) on that run's weights, so every net's
latency is measured exactly as the winner's is. Writes OUT/deploy_latency.json (one record per net) and
prints a table. Latency wants an idle machine: run it with nothing else on the cores, and say so.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import optuna

from search.data import load_study_data
from search.storage import open_storage
from search.study import stored_settings
from space import Genome, analyze, build
from train.deploy import deploy
from train.engine import load_weights


def main(argv: list[str]) -> int:
    storage, name, out, data_dir, *rest = argv
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(storage, create=False))
    settings = stored_settings(study)
    seed = int(rest[0]) if rest else settings.seed
    data = load_study_data(settings, data_dir, download=False)
    records = {}
    for path in sorted(Path(out, "runs").glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("seed") != seed or r.get("held_out") != "test":
            continue
        genome = Genome.from_json(r["genome"])
        net = build(genome)
        net.load_state_dict(load_weights(path.with_suffix(".model.pt")))
        with tempfile.TemporaryDirectory() as tmp:
            rec = deploy(net.eval(), Path(tmp) / "net.onnx", data, r["test_acc"], int8_path=Path(tmp) / "net.int8.onnx",
                         log=lambda line: None)
        a = analyze(genome)
        records[r["label"]] = {"seed": seed, "params": a.params, "macs": a.macs, "torch_acc": r["test_acc"],
                               "fp32": rec["fp32"], "int8": rec["int8"], "onnxruntime": rec["onnxruntime"]}
        print(f"{r['label']}: int8 {rec['int8']['latency_ms_b1']:.3f} ms, fp32 {rec['fp32']['latency_ms_b1']:.3f} ms "
              f"(batch 1, 1 thread, {rec['int8']['cpu']}); int8 test acc {rec['int8']['test_acc']:.4f}", flush=True)
    Path(out, "deploy_latency.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
