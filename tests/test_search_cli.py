"""The search commands end to end on tiny synthetic data: outputs, exported winner, resume, bad input."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest

from search import run as run_cmd
from search.lifecycle import classify
from search.settings import SearchSettings
from search.study import make_pruner, open_study
from train.engine import TrainConfig
from tests.search_helpers import ROOT, TINY, call, one_error_line, run_main, run_module, write_cifar_batches


@pytest.mark.parametrize("args, text", [
    (["--trials", "0"], "--trials must be a positive integer"),
    (["--trials", "-3"], "--trials must be a positive integer"),
    (["--trial-epochs", "0"], "--trial-epochs must be a positive integer"),
    (["--final-epochs", "-1"], "--final-epochs must be a positive integer"),
    (["--trials", "many"], "invalid int value"),
    (["--max-params", "500"], "no genome of the search space meets --max-params 500"),  # widths of 8 fit 2,000
    (["--min-rf", "4000"], "none reaches RF 4000"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--pruner", "sometimes"], "unknown pruner"),
    (["--val-size", "1.5"], "--val-size"),
    (["--storage", "foo://bar"], "unsupported storage URL scheme"),
    (["--storage", "postgresql://nas:s3cret@127.0.0.1:1/nas"], "storage postgresql://nas:***@127.0.0.1:1/nas"),
    (["--storage", "results/no_suffix"], "cannot tell what storage"),
    (["--subset-train", "40", "--batch-size", "32"], "make 0 optimizer steps"),
    (["--prescreen", "0"], "--prescreen must be a positive integer (1: off), got 0"),
    (["--prescreen", "3", "--proxy", "snip"], "unknown --proxy 'snip'; choose one of: vote, synflow, jacov"),
    (["--proxy", "synflow"], "--proxy synflow needs --prescreen K with K >= 2"),
])
def test_bad_input_is_one_line_and_exit_2(args, text, capsys, tmp_path):
    argv = ["--dataset", "synthetic", "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "o"), *args]
    code, _, err = call(run_cmd.main, argv, capsys)
    assert code == 2
    one_error_line(err, text)
    assert "s3cret" not in err


def test_storage_that_is_not_a_database(capsys, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    code, _, err = call(run_cmd.main, [*TINY, "--storage", str(junk), "--out", str(tmp_path)], capsys)
    assert code == 2
    one_error_line(err, "cannot open storage")


def test_missing_cifar10_without_network(capsys, tmp_path, monkeypatch):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    argv = ["--data-dir", str(tmp_path / "data"), "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "o")]
    code, _, err = call(run_cmd.main, argv, capsys)
    assert code == 2
    one_error_line(err, "could not be downloaded")
    code, _, err = call(run_cmd.main, [*argv, "--no-download"], capsys)
    assert code == 2
    one_error_line(err, "CIFAR-10 not found")


def test_corrupt_cifar10_file(capsys, tmp_path):
    from train.data import make_synthetic

    folder = write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py", make_synthetic(100, 50))
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:1000])  # truncated
    argv = ["--data-dir", str(tmp_path / "data"), "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "o")]
    code, _, err = call(run_cmd.main, argv, capsys)
    assert code == 2
    one_error_line(err, "corrupt or truncated")


def test_existing_study_with_other_settings_is_refused(capsys, tmp_path):
    db = tmp_path / "s.db"
    other = SearchSettings(dataset="synthetic", max_params=100_000, min_rf=44, trial_epochs=5, val_size=0.25, seed=0,
                           subset_train=128, batch_size=16, lr=0.0125, augment=False)
    open_study(optuna.storages.RDBStorage(f"sqlite:///{db}"), "synthetic-nas", other, make_pruner("none", 5))
    code, _, err = call(run_cmd.main, [*TINY, "--storage", str(db), "--out", str(tmp_path)], capsys)
    assert code == 2
    one_error_line(err, "(trial_epochs: 5 -> 1)")
    assert "--study-name NEW" in err


def test_a_study_begun_under_older_defaults_resumes_with_its_own_values(capsys, tmp_path):
    # What TINY creates, except for an lr and a validation split TINY does not give: as if train.defaults had
    # changed since the study was begun. The same command must resume it, measuring as it did.
    db = tmp_path / "s.db"
    begun = SearchSettings(dataset="synthetic", max_params=100_000, min_rf=44, trial_epochs=1, val_size=0.125, seed=0,
                           subset_train=128, batch_size=16, lr=0.05, augment=False
                           ).with_recipe(bias_lr_scale=2.5)
    open_study(optuna.storages.RDBStorage(f"sqlite:///{db}"), "synthetic-nas", begun, make_pruner("none", 1))
    code, out, err = call(run_cmd.main, [*TINY, "--trials", "1", "--no-final", "--no-presets", "--storage", str(db),
                                         "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert ("kept the settings it was begun with: val_size 0.125 (default now 0.25), lr 0.05 (default now 0.0125), "
            f"recipe.bias_lr_scale 2.5 (default now {TrainConfig.bias_lr_scale!r})") in out
    assert "112 training / 16 validation images" in out  # 0.125 of 128 held out, not 0.25
    study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
    assert SearchSettings.from_dict(study.user_attrs["settings"]) == begun
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 1
    # a setting the user gives is never replaced: a flagged difference is still refused
    code, _, err = call(run_cmd.main, [*TINY, "--val-size", "0.25", "--storage", str(db), "--out", str(tmp_path)], capsys)
    assert code == 2
    one_error_line(err, "(val_size: 0.125 -> 0.25)")


def test_bad_input_through_the_real_entry_point(tmp_path):
    r = run_module("search.run", "--trials", "0", "--storage", str(tmp_path / "s.db"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --trials must be a positive integer, got 0"]
    r = run_module("search.retrain", "--storage", str(tmp_path / "none.db"), "--study-name", "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no study storage" in r.stderr


REPRODUCE = r"""
import importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location("best_model", sys.argv[1] + "/best_model.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
net = m.Net()
net.load_state_dict(torch.load(sys.argv[1] + "/best_model.pt", map_location="cpu", weights_only=True), strict=True)
assert not any(k.split(".")[0] in ("space", "train", "search") for k in sys.modules), "the model needs only torch"
net.eval()
from search.data import load_full  # only to get the same test images
data = load_full("synthetic", None, 128, 64, seed=0)
x = torch.from_numpy(data.x_test).permute(0, 3, 1, 2).float() / 255
x = (x - torch.tensor(m.MEAN).view(1, 3, 1, 1)) / torch.tensor(m.STD).view(1, 3, 1, 1)
with torch.no_grad():
    acc = (net(x).argmax(1) == torch.from_numpy(data.y_test)).float().mean().item()
print(json.dumps({"acc": acc, "n": len(data.y_test)}))
"""


def test_search_end_to_end_and_the_exported_winner_reproduces_its_test_accuracy(tmp_path):
    db, out = tmp_path / "s.db", tmp_path / "out"
    r = run_module("search.run", *TINY, "--trials", "2", "--storage", str(db), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["trained"] == 2 and summary["rejected"] >= 2  # two presets exceed 100k parameters
    assert "epoch 1/1  train acc" in r.stdout and "  training  " in r.stdout  # a line per trial epoch
    # the figure printed is final.json's, which the exported model reproduces below
    assert summary["test_acc"] == json.loads((out / "final.json").read_text())["test_acc"]
    assert summary["study"] == "synthetic-nas"
    for name in ("leaderboard.csv", "report.md", "best_model.py", "best_model.pt", "best_genome.json", "final.json",
                 "plots/pareto.png", "plots/history.png", "plots/rejected.png", "plots/final_curves.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in r.stdout  # every output path is printed
    final = json.loads((out / "final.json").read_text())
    report = (out / "report.md").read_text()
    for text in ("## Winner", f"test accuracy {final['test_acc']:.4f}", "Per-class report", "Confusion matrix",
                 "c1.0", "rejected", "epochs without pruning", "## Evidence", "search.run",
                 "Training recipe, stored with the study", f"ema_decay {TrainConfig().ema_decay}"):
        assert text in report, text
    assert "of the 2 trained trials" in report  # its top N counts trained trials only
    assert final["test_acc_tta"] is None and "flip-TTA" not in r.stdout  # synthetic: trained without flips
    study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
    assert sum(classify(t) in ("completed", "pruned") for t in study.trials) == 2
    assert len((out / "leaderboard.csv").read_text().strip().splitlines()) == len(study.trials) + 1

    check = subprocess.run([sys.executable, "-c", REPRODUCE, str(out)], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert abs(got["acc"] - final["test_acc"]) <= 1 / got["n"] + 1e-9

    r = run_main("search.report", "--storage", str(db), "--study-name", "synthetic-nas", "--out", str(tmp_path / "r"))
    assert r.returncode == 0 and (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "leaderboard.csv").is_file()
    r = run_main("search.export", "--storage", str(db), "--study-name", "synthetic-nas", "-o", str(tmp_path / "m.py"))
    assert r.returncode == 0 and f"trial {final['trial']}" in r.stdout
    assert "class Net(nn.Module)" in (tmp_path / "m.py").read_text()
    # Running the finished command again trains nothing, keeps the retrained model and reports the earlier
    # times, not 0 s; --quiet: no epoch lines.
    r = run_main("search.run", *TINY, "--trials", "2", "--storage", str(db), "--out", str(out), "--json", "--quiet")
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and again["test_acc"] == summary["test_acc"] and "already retrained" in r.stdout
    assert "epoch 1/1" not in r.stdout and "already done: nothing trained in this run" in r.stdout
    assert "(0 s)" not in r.stdout and "retrained earlier" in r.stdout


def _wait_for_training(study_name: str, db, proc, after: set[int], timeout: float = 240) -> int:
    """The number of a trial (not in `after`) that `proc` is training, once it is training one."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
        except (KeyError, Exception):
            time.sleep(0.1)
            continue
        done = sum(classify(t) == "completed" for t in trials)
        for t in trials:
            if (t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("phase") == "training"
                    and t.number not in after and done >= 1):
                return t.number
        time.sleep(0.05)
    raise AssertionError("the search never started training a trial")


def test_interrupted_and_killed_runs_resume_to_exactly_n_trained(tmp_path):
    db, out = tmp_path / "s.db", tmp_path / "out"
    # 4 epochs per trial rather than 1: a trial must still be training when the signal arrives.
    tiny = [("4" if prev == "--trial-epochs" else arg) for prev, arg in zip([None, *TINY], TINY)]
    cmd = [sys.executable, "-m", "search.run", *tiny, "--trials", "2", "--no-final", "--storage", str(db),
           "--out", str(out), "--json"]
    # 1. Ctrl-C in the middle of a trial: exit 130, no traceback, the trial failed as interrupted.
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    interrupted = _wait_for_training("synthetic-nas", db, p, set())
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err and "run the same command to resume" in err, err
    # 2. SIGKILL in the middle of another trial: nothing can be cleaned up.
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _wait_for_training("synthetic-nas", db, p, {interrupted})
    study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
    kept = {t.number for t in study.trials if classify(t) == "completed"}
    p.kill()
    p.communicate()
    # 3. The same command finishes the job.
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["trained"] == 2
    trials = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}").trials
    by_number = {t.number: t for t in trials}
    assert by_number[interrupted].user_attrs["failed_reason"] == "interrupted"
    assert "died" in by_number[killed].user_attrs["failed_reason"]
    assert all(classify(by_number[n]) == "failed" for n in (interrupted, killed))
    assert {n for n in kept if classify(by_number[n]) == "completed"} == kept  # finished work is kept
    trained = [t for t in trials if classify(t) in ("completed", "pruned")]
    assert len(trained) == 2
    genomes = [t.user_attrs["genome"] for t in trained]
    assert len(set(genomes)) == 2  # no genome trained twice to completion
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for n in (interrupted, killed):  # both candidates were queued again and trained in the end
        origin = by_number[n].user_attrs.get("retry_of", n)
        assert any(t.user_attrs.get("retry_of") == origin for t in trained), n


def test_no_presets_starts_the_study_with_sampled_candidates_only(capsys, tmp_path):
    db = tmp_path / "s.db"
    code, _, err = call(run_cmd.main, [*TINY, "--trials", "1", "--no-final", "--no-presets", "--storage", str(db),
                                       "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
    assert study.trials and not any("preset" in t.user_attrs for t in study.trials)
    assert sum(classify(t) in ("completed", "pruned") for t in study.trials) == 1
