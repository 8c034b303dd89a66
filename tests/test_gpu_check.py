"""tools/gpu_check.py's plumbing: every part's result reaches gpu_check.json even when another
part fails, and the exit code says a part failed (the parts themselves need a GPU or minutes of CPU)."""
from __future__ import annotations

import importlib.util
import json
import sys

from tests.search_helpers import ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
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


def test_the_default_budget_gives_every_part_its_whole_estimate(tmp_path, monkeypatch):
    """A run without --budget or --scale (the GPU session's call) cuts no part's limit short."""
    gc = load_gpu_check()
    monkeypatch.setattr(gc, "part_command", lambda name, args, out: ["-c", "print('{}')"])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path), "--device", "cpu", "--only", "syncs"])
    gc.main()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["limits"] == {name: round(seconds, 1) for name, seconds in gc.LIMITS.items()}
    assert sum(report["limits"].values()) <= report["budget"]


def test_the_part_limits_fit_the_budget_and_are_printed(tmp_path, monkeypatch, capsys):
    gc = load_gpu_check()
    assert sum(gc.fit_limits(gc.LIMITS, 200).values()) <= 200 + 1e-9  # a smaller budget shrinks them
    monkeypatch.setattr(gc, "part_command", lambda name, args, out: ["-c", "print('{}')"])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path), "--device", "cpu", "--quick", "--only", "syncs",
                                      "--budget", "100"])
    gc.main()
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "limits:" in l)
    assert line.endswith("= 600 s of a budget of 600 s")  # --quick: x6
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert sum(report["limits"].values()) <= report["budget"] + 0.5


def test_a_cuda_that_fails_to_initialise_still_leaves_the_report(tmp_path, monkeypatch):
    import torch
    gc = load_gpu_check()

    def broken(*a, **k):
        raise RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu.")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", broken)
    monkeypatch.setattr(gc, "part_command", lambda name, args, out: ["-c", "print('{\"pipeline_images_per_s\": 1}')"])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path), "--device", "cuda", "--only", "train_bench"])
    assert gc.main() == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "CUDA driver initialization failed" in report["gpu_error"] and report["parts"]["train_bench"]["ok"]


def test_train_bench_keeps_the_eager_figures_and_prints_the_compile_error(monkeypatch, capsys):
    from train import bench
    real = bench.train

    def no_compiler(genome, config, data, on_epoch=None):
        if config.compile:  # as torch.compile without a C compiler (CXX=/nonexistent) fails
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return real(genome, config, data, on_epoch=on_epoch)

    monkeypatch.setattr(bench, "train", no_compiler)
    code = bench.main(["seed003_net", "--dataset", "synthetic", "--compile", "--seconds", "0.2", "--repeats", "2",
                       "--batch-size", "16",
                       "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert out["pipeline_images_per_s"] > 0 and out["model_only_images_per_s"] > 0 and len(out["pipeline_runs"]) == 2
    assert "No working C++ compiler" in out["errors"]["compiled"] and "compiled_images_per_s" not in out
