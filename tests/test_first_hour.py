"""A new user's first hour (issue 14), each snag through the command line: the message and the exit code."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search import export as export_cmd
from search import report as report_cmd
from search import run as run_cmd
from search.lifecycle import classify
from search.report import _md_table
from search.loop import Search
from search.study import enqueue_presets, make_pruner, open_study
from space.genome import GenomeError
from tests.search_helpers import ROOT, FakeTrain, call, last_error_line, run_main, run_module, settings
from train import run as train_run
from train.data import DataError
from train.engine import TrainError


def searched_study(db: Path, name: str) -> optuna.Study:
    """A study as search.run leaves it (without training): 100k parameters, so two presets are rejected."""
    s = settings(max_params=100_000)
    study, _ = open_study(optuna.storages.RDBStorage(f"sqlite:///{db}"), name, s, make_pruner("none", 3))
    enqueue_presets(study, 10)
    Search(study, s, 10, FakeTrain(epochs=3), 2, log=lambda line: None).run()
    return study


# 1. report / export / retrain find the study: the only one, or the most recent, and say which.

def test_reading_commands_find_the_only_study_in_results_and_say_which(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = call(report_cmd.main, [], capsys)
    assert code == 2
    last_error_line(err, "no study in results/ (run search.run first")
    (tmp_path / "results").mkdir()
    searched_study(tmp_path / "results" / "digits-nas.db", "digits-nas")
    code, out, err = call(report_cmd.main, [], capsys)
    assert code == 0 and "using study digits-nas in sqlite:///results/digits-nas.db (the only one in results/)" in err
    assert (tmp_path / "results" / "digits-nas" / "report.md").is_file() and "report: results/digits-nas/report.md" in out
    # The README's old example after the digits quickstart: names the study that exists instead of a traceback.
    code, _, err = call(report_cmd.main, ["--study-name", "cifar10-nas"], capsys)
    assert code == 2
    last_error_line(err, "no study 'cifar10-nas' in results/; studies there: digits-nas (sqlite:///results/digits-nas.db)")
    code, out, err = call(export_cmd.main, ["-o", "best.py"], capsys)
    assert code == 0 and "using study digits-nas" in err and (tmp_path / "best.py").is_file()


def test_several_studies_the_most_recent_is_used_and_the_others_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    searched_study(tmp_path / "results" / "old.db", "old-nas")
    shared = tmp_path / "results" / "shared.db"
    searched_study(shared, "a-nas")
    searched_study(shared, "b-nas")
    (tmp_path / "results" / "notes.db").write_text("not a database")  # skipped, and left as it was
    code, _, err = call(export_cmd.main, ["-o", "m.py"], capsys)
    assert code == 0
    assert re.search(r"using study b-nas in sqlite:///results/shared.db, the most recent of 3 in results/ "
                     r"\(others: a-nas .*old-nas .*choose with --study-name\)", err), err
    code, _, err = call(export_cmd.main, ["--storage", str(shared), "-o", "m.py"], capsys)
    assert code == 0 and "using study b-nas, the newest of 2" in err and "others: a-nas" in err
    code, _, err = call(export_cmd.main, ["--study-name", "old-nas", "-o", "m.py"], capsys)  # not at results/old-nas.db
    assert code == 0 and "using study old-nas in sqlite:///results/old.db" in err
    assert (tmp_path / "results" / "notes.db").read_text() == "not a database"


def test_retrain_without_any_study_is_one_error_line(tmp_path):
    r = run_main("search.retrain", "--storage", str(tmp_path / "x.db"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: no study storage at {tmp_path / 'x.db'} (run search.run first, or give --storage)"]


# 2. and 4. train.run: an output folder per spec and dataset; a foreign checkpoint is one error line;
#           the test-set figure is called test; a finished run that is reused says so.

TRAIN = ["--dataset", "synthetic", "--epochs", "1", "--subset", "128", "--batch-size", "32"]
TRAIN_ERRORS = (GenomeError, DataError, TrainError)


def test_train_run_output_folders_checkpoints_and_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = call(train_run.main, ["seed003_net", *TRAIN], capsys, TRAIN_ERRORS)
    assert code == 0
    assert re.search(r"epoch 1/1: train loss [\d.]+ acc [\d.]+  test loss [\d.]+ acc [\d.]+", out), out
    assert "val loss" not in out and "outputs in results/train/seed003_net-synthetic/" in out
    code, _, _ = call(train_run.main, ["seed001", *TRAIN], capsys, TRAIN_ERRORS)
    assert code == 0  # another spec: its own folder, no clash with the first checkpoint
    assert sorted(p.name for p in (tmp_path / "results" / "train").iterdir()) == ["seed001-synthetic",
                                                                                 "seed003_net-synthetic"]
    code, _, err = call(train_run.main, ["seed001", *TRAIN, "--out", "results/train/seed003_net-synthetic"], capsys,
                        TRAIN_ERRORS)
    assert code == 2
    last_error_line(err, "checkpoint results/train/seed003_net-synthetic/checkpoint.pt belongs to another model")
    code, out, _ = call(train_run.main, ["seed003_net", *TRAIN], capsys, TRAIN_ERRORS)
    assert code == 0 and "reused the finished run in results/train/seed003_net-synthetic/" in out
    assert "nothing trained" in out and "epoch 1/1" not in out


def test_train_run_through_the_real_entry_point_foreign_checkpoint(tmp_path):
    out = tmp_path / "o"
    assert run_main("train.run", "seed003_net", *TRAIN, "--quiet", "--out", str(out)).returncode == 0
    r = run_module("train.run", "seed001", *TRAIN, "--quiet", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {out / 'checkpoint.pt'} belongs to another")


# 3. train.bench: defaults in --help, an estimate up front, a line per measurement.

def test_bench_help_shows_defaults_and_a_run_shows_its_estimate_and_progress(tmp_path):
    r = run_main("train.bench", "--help")
    assert r.returncode == 0
    help_text = " ".join(r.stdout.split())
    assert "(default: 20.0)" in help_text and "(default: 3)" in help_text and "(default: cifar10)" in help_text
    r = run_module("train.bench", "seed003_net", "--dataset", "synthetic", "--seconds", "0.2", "--repeats", "1",
                   "--batch-size", "32")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "1 x model_only, pipeline on cpu, 0.2 s each: about 0.0 min", lines
    assert re.match(r"\[1/2\] model_only: [\d,.]+ images/s \(\d+ s of about 1 s\)", lines[1]), lines
    assert lines[2].startswith("[2/2] pipeline: ")
    assert "pipeline_images_per_s" in r.stdout


@pytest.mark.parametrize("args, text", [
    (["train.run", "seed003_net", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["train.run", "nonet", "--epochs", "1"], "'nonet' is neither a preset"),
    (["train.bench", "seed003_net", "--seconds", "0"], "--seconds, --repeats and --batch-size must be positive"),
    (["space.describe"], "the following arguments are required: spec"),
    (["space.sample", "--n", "many"], "argument --n: invalid int value"),
    (["space.export", "seed001", "-o", "/proc/nope/x.py"], "cannot write /proc/nope/x.py"),
])
def test_cli_mistakes_are_one_error_line_and_exit_2(args, text):
    r = run_main(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ") and text in r.stderr


# 5. Exporting a rejected trial needs --force and names the broken rule.

def test_export_of_a_rejected_trial_needs_force(tmp_path, capsys):
    db = tmp_path / "s.db"
    study = searched_study(db, "x-nas")
    rejected = next(t for t in study.trials if classify(t) == "rejected")
    argv = ["--storage", str(db), "--study-name", "x-nas", "--trial", str(rejected.number), "-o", str(tmp_path / "r.py")]
    code, _, err = call(export_cmd.main, argv, capsys)
    assert code == 2
    last_error_line(err, f"trial {rejected.number} was rejected by the search, it breaks the rules: "
                    f"{rejected.user_attrs['rejected']}; add --force")
    assert not (tmp_path / "r.py").exists()
    code, out, err = call(export_cmd.main, [*argv, "--force"], capsys)
    assert code == 0 and (tmp_path / "r.py").is_file() and f"warning: trial {rejected.number} breaks the rules" in err


# 6. A run that fails on its inputs leaves nothing behind.

def test_failed_inputs_leave_no_folder_and_no_empty_study(tmp_path, monkeypatch, capsys):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.chdir(tmp_path)
    code, _, err = call(run_cmd.main, ["--data-dir", "nonexistent/cifar"], capsys)
    assert code == 2
    last_error_line(err, "could not be downloaded")
    assert list(tmp_path.iterdir()) == []  # neither nonexistent/ nor results/cifar10-nas.db
    # Settings that fail after the storage was opened (too few steps): a new storage is removed again ...
    code, _, err = call(run_cmd.main, ["--dataset", "synthetic", "--subset-train", "40", "--batch-size", "32"], capsys)
    assert code == 2 and list(tmp_path.iterdir()) == []
    # ... an existing one is kept.
    (tmp_path / "results").mkdir()
    searched_study(tmp_path / "results" / "keep.db", "synthetic-nas")
    code, _, _ = call(run_cmd.main, ["--dataset", "synthetic", "--subset-train", "40", "--batch-size", "32",
                                     "--storage", "results/keep.db"], capsys)
    assert code == 2 and (tmp_path / "results" / "keep.db").is_file()
    code, _, err = call(train_run.main, ["seed001", "--epochs", "1", "--data-dir", "nonexistent/cifar"], capsys,
                        TRAIN_ERRORS)
    assert code == 2 and not (tmp_path / "nonexistent").exists() and not (tmp_path / "results" / "train").exists()


# 7. The set-up is two commands; it says what it needs.

def test_setup_script_says_what_it_needs_and_ci_runs_it():
    r = subprocess.run(["./setup.sh", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    usage = re.search(r"usage: \./setup\.sh ([\w|]+)", r.stderr)
    assert r.returncode == 2 and usage and {"quickstart", "test"} <= set(usage.group(1).split("|")), r.stderr
    r = subprocess.run(["./setup.sh", "test"], cwd=ROOT, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": "false"})
    needed = re.match(r"error: tinynas needs Python >= (3\.\d+)", r.stderr)
    assert r.returncode == 2 and needed, r.stderr
    assert "VENV=\"$(mktemp -d)/venv\" exec ./setup.sh test" in (ROOT / ".ci" / "run").read_text()
    # The README's set-up section gives only commands setup.sh takes, and the Python it checks for.
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("## First ten minutes")]
    named = re.findall(r"\./setup\.sh (\w+)", setup)
    assert {"quickstart", "test"} <= set(named) <= set(usage.group(1).split("|"))
    assert f"Python {needed.group(1)} or newer" in setup


# 8. One number format per column in report.md's tables.

def test_report_tables_format_each_column_one_way():
    df = pd.DataFrame({"val_acc": [0.98765, 0.5], "params": [84322.0, 1234.0], "train_seconds": [12.4, 7.7710],
                       "epochs": [4, 4]})
    df.loc[2] = [0.1, float("nan"), 2.7030, 1]
    rows = _md_table(df).splitlines()[2:]
    assert rows == ["| 0.9877 | 84,322 | 12.4 | 4 |", "| 0.5000 | 1,234 | 7.8 | 4 |", "| 0.1000 |  | 2.7 | 1 |"]
