"""A new user's second hour (issue 26), the search side: the exported file's normalisation, a noisy bench,
a --subset-train without --val-size, and rejected trials as Optuna's own tools show them."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from search import bench
from search import export as export_cmd
from search import run as run_cmd
from search.data import NORMALISATION_KEY, load_full
from search.loop import Search
from search.settings import DATASET_SIZES, DEFAULTS, default_val_size
from search.study import enqueue_presets, make_pruner, open_study, stored_settings
from tests.search_helpers import ROOT, TINY, FakeTrain, call, settings


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 2. search.export writes MEAN and STD, so the README's load snippet works on the exported file.

def test_exported_winner_defines_the_normalisation_its_final_retrain_used(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(run_cmd.main, [*TINY, "--trials", "1"], capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="synthetic-nas", storage="sqlite:///results/synthetic-nas.db")
    data = load_full("synthetic", None, 128, None, 0)  # TINY's training images: what the final retrain trained on
    assert study.user_attrs[NORMALISATION_KEY]["mean"] == pytest.approx(data.mean.tolist(), abs=1e-6)
    code, out, err = call(export_cmd.main, ["-o", "results/best.py"], capsys)
    assert code == 0, err
    best = load_module(tmp_path / "results" / "best.py")
    final = load_module(tmp_path / "results" / "synthetic-nas" / "best_model.py")
    assert best.MEAN == final.MEAN and best.STD == final.STD  # the same as the retrain's own file
    assert np.allclose(best.MEAN, data.mean, atol=1e-6) and np.allclose(best.STD, data.std, atol=1e-6)
    # The README's snippet, on the exported file and the retrained weights.
    net = best.Net()
    net.load_state_dict(torch.load(tmp_path / "results" / "synthetic-nas" / "best_model.pt", weights_only=True))
    net.eval()
    x = (torch.rand(1, 3, 32, 32) - torch.tensor(best.MEAN).view(1, 3, 1, 1)) / torch.tensor(best.STD).view(1, 3, 1, 1)
    assert net(x).shape == (1, 10)


def test_export_computes_the_normalisation_of_a_study_stored_before_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    for name, dataset in (("old", "synthetic"), ("old-cifar", "cifar10")):
        s = settings(dataset=dataset, max_params=100_000)
        study, _ = open_study(optuna.storages.RDBStorage(f"sqlite:///results/{name}.db"), name, s, make_pruner("none", 3))
        enqueue_presets(study, 10)
        Search(study, s, 10, FakeTrain(epochs=3), 1, log=lambda line: None).run()
        assert NORMALISATION_KEY not in study.user_attrs
    code, out, err = call(export_cmd.main, ["--study-name", "old", "--storage", "results/old.db", "-o", "old.py"], capsys)
    assert code == 0, err
    data = load_full("synthetic", None, None, None, 0)
    assert np.allclose(load_module(tmp_path / "old.py").MEAN, data.mean, atol=1e-6)
    code, out, err = call(export_cmd.main, ["--study-name", "old-cifar", "--storage", "results/old-cifar.db",
                                            "--data-dir", "nowhere", "-o", "c.py"], capsys)
    assert code == 2 and err.startswith("error: study 'old-cifar' stores no input normalisation") and "--data-dir" in err
    assert "Traceback" not in err and not (tmp_path / "c.py").exists() and not (tmp_path / "nowhere").exists()


# 4. search.bench never reports an impossible speed-up, nor picks --jobs from runs that disagree, silently.

class FakeMeasure:
    """Stands in for bench.measure: each job count's aggregate images/s, in the order they are asked for."""

    def __init__(self, rates: dict[int, list[float]]):
        self.rates = {jobs: list(r) for jobs, r in rates.items()}
        self.calls: list[int] = []

    def __call__(self, genomes, jobs, *args, **kwargs) -> dict:
        self.calls.append(jobs)
        rate = self.rates[jobs].pop(0)
        return {"jobs": jobs, "images_per_s": rate, "per_job_images_per_s": rate / jobs}


def run_bench(monkeypatch, capsys, rates: dict[int, list[float]]) -> tuple[dict, str, str, FakeMeasure]:
    fake = FakeMeasure(rates)
    monkeypatch.setattr(bench, "measure", fake)
    code, out, err = call(bench.main, ["--device", "cpu", "--jobs", "1,2", "--genomes", "1", "--json"], capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), out, err, fake


def test_bench_with_agreeing_runs_recommends_the_fastest_job_count(monkeypatch, capsys):
    result, out, err, fake = run_bench(monkeypatch, capsys, {1: [100, 110], 2: [180, 170]})
    assert fake.calls == [1, 1, 2, 2] and err == ""
    assert result["reliable"] and result["warnings"] == [] and result["best_jobs"] == 2
    assert [r["images_per_s"] for r in result["rows"]] == [105, 175] and result["rows"][1]["speedup"] == 1.67
    first = result["rows"][0]
    for row in result["rows"]:  # the projection: the search takes proportionally less time, the retrain the same
        assert row["total_seconds"] == pytest.approx(row["search_seconds"] + row["final_seconds"], abs=0.2)
        assert row["final_seconds"] == first["final_seconds"]
        assert row["search_seconds"] * row["images_per_s"] == pytest.approx(
            first["search_seconds"] * first["images_per_s"], rel=0.01)
    assert result["rows"][1]["search_seconds"] < first["search_seconds"]
    assert "fastest: --jobs 2" in out and "unreliable" not in out


def test_bench_remeasures_an_impossible_speedup_and_then_says_it_is_noise(monkeypatch, capsys):
    # The busy machine: 19 images/s alone, 235 with two jobs.
    result, out, err, fake = run_bench(monkeypatch, capsys, {1: [19, 20, 19, 21], 2: [235, 230]})
    assert fake.calls == [1, 1, 2, 2, 1, 1]  # the reference count is measured again
    assert not result["reliable"] and result["best_jobs"] is None
    assert not any(r["reliable"] for r in result["rows"])
    assert "more than 2 times as many jobs can train" in err and err.startswith("warning: jobs 2: ")
    assert "fastest: unknown" in out and out.count("unreliable") == 2


def test_bench_remeasured_reference_that_makes_sense_clears_the_warning(monkeypatch, capsys):
    result, out, err, fake = run_bench(monkeypatch, capsys, {1: [19, 20, 200, 210], 2: [235, 230]})
    assert fake.calls == [1, 1, 2, 2, 1, 1]
    assert result["reliable"] and result["best_jobs"] == 2 and err == ""
    assert result["rows"][0]["images_per_s"] == 205 and result["rows"][0]["runs"] == [19, 20, 200, 210]


def test_bench_runs_that_never_agree_are_flagged_and_not_recommended(monkeypatch, capsys):
    result, out, err, fake = run_bench(monkeypatch, capsys, {1: [100, 105], 2: [100, 300, 190]})
    assert fake.calls == [1, 1, 2, 2, 2]  # at most --repeats (3) runs
    rows = {r["jobs"]: r for r in result["rows"]}
    assert rows[1]["reliable"] and not rows[2]["reliable"] and not result["reliable"]
    assert result["best_jobs"] == 1 and "(of the reliable rows only)" in out
    assert "jobs 2: its 3 runs disagree (100, 300, 190 images/s" in err


# 5. --subset-train without --val-size holds out the default fraction of the subset, and says so.

def test_default_validation_split_of_a_subset_is_the_default_fraction():
    assert default_val_size("cifar10", None) == (5000, "")
    n, note = default_val_size("cifar10", 2000)
    assert n == 200 and "--subset-train 2,000 without --val-size: 200 of them" in note and "10%" in note
    assert default_val_size("cifar10", 50_000) == (5000, "")
    assert default_val_size("digits", 500) == (DEFAULTS["digits"].val_size, "")  # already a fraction of what is there


def test_subset_without_val_size_is_split_stored_and_resumed_alike(tmp_path, monkeypatch, capsys):
    # synthetic made to default to a count, as CIFAR-10 does (5000 of 50,000 there, 128 of 512 here).
    monkeypatch.setitem(DEFAULTS, "synthetic", replace(DEFAULTS["synthetic"], val_size=128))
    monkeypatch.setitem(DATASET_SIZES, "synthetic", (512, 256))
    monkeypatch.chdir(tmp_path)
    base = ["--dataset", "synthetic", "--subset-train", "256", "--subset-test", "32", "--trial-epochs", "1",
            "--batch-size", "16", "--max-params", "100000", "--no-final", "--no-presets"]
    argv = [*base, "--trials", "1"]
    code, out, err = call(run_cmd.main, argv, capsys)
    assert code == 0, err
    assert "192 training / 64 validation images (--subset-train 256 without --val-size: 64 of them held out" in out
    db = "sqlite:///results/synthetic-nas.db"
    assert stored_settings(optuna.load_study(study_name="synthetic-nas", storage=db)).val_size == 64
    code, out, err = call(run_cmd.main, [*base, "--trials", "2"], capsys)  # resume
    assert code == 0 and "resumed" in out and "kept the settings" not in out and "192 training / 64" in out
    code, out, err = call(run_cmd.main, [*argv, "--val-size", "32"], capsys)  # an explicit one wins: not this study's
    assert code == 2 and "val_size: 64 -> 32" in err
    code, out, err = call(run_cmd.main, [*argv, "--val-size", "32", "--study-name", "v32"], capsys)
    assert code == 0 and "224 training / 32 validation images;" in out and "without --val-size" not in out
    # A study stored with the unscaled default keeps it on a resume, and the run says so.
    old = settings(subset_train=256, val_size=128, trial_epochs=1, batch_size=16, lr=DEFAULTS["synthetic"].lr_for(16),
                   max_params=100_000)
    open_study(optuna.storages.RDBStorage("sqlite:///results/old.db"), "old", old, make_pruner("median", 1))
    code, out, err = call(run_cmd.main, [*argv, "--storage", "results/old.db", "--study-name", "old"], capsys)
    assert code == 0, err
    assert "kept the settings it was begun with: val_size 128 (default now 64)" in out
    assert "128 training / 128 validation images;" in out


# 7. Rejected (and other never-trained) trials carry a `status` user attr that Optuna's own tools show.

def test_rejected_and_duplicate_trials_are_marked_in_optunas_own_trial_list(tmp_path):
    db = tmp_path / "s.db"
    s = settings(max_params=100_000)
    study, _ = open_study(optuna.storages.RDBStorage(f"sqlite:///{db}"), "st", s, make_pruner("none", 3))
    enqueue_presets(study, 10)
    study.enqueue_trial({}, user_attrs={"genome": study.trials[0].user_attrs["genome"]})  # seed003_net again
    Search(study, s, 10, FakeTrain(epochs=3), 2, log=lambda line: None).run()
    optuna_cli = Path(sys.executable).parent / "optuna"  # the console script pip installs beside the interpreter
    r = subprocess.run([str(optuna_cli), "trials", "--storage", f"sqlite:///{db}", "--study-name", "st", "-f", "json",
                        "--flatten"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = {row["number"]: row for row in json.loads(r.stdout)}
    rejected = [n for n, row in rows.items() if row.get("user_attrs_status") == "rejected"]
    assert {1, 2} <= set(rejected)  # the two presets above 100k parameters (and any sampled net that broke a rule)
    for n in rejected:  # Optuna itself calls them complete; the attrs say what they were
        assert rows[n]["state"] == "PRUNED" and "parameters" in rows[n]["user_attrs_rejected"]
    assert rows[3]["user_attrs_status"] == "duplicate" and rows[3]["user_attrs_duplicate_of"] == 0
    assert "user_attrs_status" not in rows[0] or rows[0]["user_attrs_status"] is None  # trained: no status
