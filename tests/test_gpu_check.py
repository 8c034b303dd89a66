"""results/benchmarks/gpu_check.py's plumbing: every part's result reaches gpu_check.json even when another
part fails, and the exit code says a part failed (the parts themselves need a GPU or minutes of CPU)."""
from __future__ import annotations

import importlib.util
import json
import sys

from tests.search_helpers import ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "results" / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_part_made_to_fail_leaves_the_others_results_and_a_non_zero_exit(tmp_path, monkeypatch):
    gc = load_gpu_check()
    stand_ins = {  # what each real part prints last, in a subprocess of its own
        "train_bench": ["-c", "print('warming up'); print('{\"pipeline_images_per_s\": 123.0}')"],
        "search_bench": ["-c", "import json; print(json.dumps({'best_jobs': 2, 'auto_jobs': 1}))"],
        "syncs": ["-c", "import time; time.sleep(30)"],  # hangs: cut off by its own time limit
    }
    monkeypatch.setattr(gc, "part_command", lambda name, args, out: stand_ins[name])
    monkeypatch.setattr(gc, "LIMITS", {**gc.LIMITS, "syncs": 3})
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path), "--device", "cpu", "--scale", "1",
                                      "--only", "syncs,train_bench,search_bench", "--fail", "train_bench"])
    assert gc.main() == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["syncs", "train_bench", "search_bench"] and report["made_to_fail"] == "train_bench"
    assert parts["train_bench"]["exit"] == 1 and "on purpose" in parts["train_bench"]["error"]
    assert parts["syncs"]["exit"] == "timeout" and not parts["syncs"]["ok"]
    assert parts["search_bench"]["ok"] and parts["search_bench"]["json"] == {"best_jobs": 2, "auto_jobs": 1}
    assert report["failed"] == ["syncs", "train_bench"]
    assert (tmp_path / "search_bench.log").read_text().count("--- exit 0 ---") == 1
