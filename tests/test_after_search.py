"""Issue 46: the commands after a search remember the study (final epochs, data and output folders) from any
working directory, and a --trial N retrain never overwrites the winner's files."""
from __future__ import annotations

import hashlib
import time
import json
from pathlib import Path

import pytest

import search.seedrun as seedrun
from search import retrain as retrain_cmd
from search import run as run_cmd
from tests.search_helpers import call

# digits, 4 trained trials of 1 epoch, a 2-epoch final retrain (the dataset's default is 15), no baselines
SEARCH = ["--dataset", "digits", "--trials", "4", "--trial-epochs", "1", "--final-epochs", "2", "--max-macs",
          "3000000", "--compare", "none", "--quiet"]
WINNER_FILES = ("best_model.pt", "best_model.py", "best_genome.json", "final.json")


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in WINNER_FILES}


def test_retrain_after_a_search_keeps_its_epochs_and_folders_from_anywhere_and_a_trial_gets_its_own_folder(
        tmp_path, capsys, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    db = home / "s.db"
    monkeypatch.chdir(home)
    code, out, err = call(run_cmd.main, [*SEARCH, "--storage", str(db)], capsys)
    assert code == 0, err
    results = home / "results" / "digits-nas"
    winner = json.loads((results / "final.json").read_text())
    before = digests(results)

    monkeypatch.chdir(elsewhere)  # another working directory: only the storage is named
    trained = []
    real = seedrun.train

    def counted(genome, config, data, on_epoch=None):
        trained.append((config.seed, config.epochs))
        return real(genome, config, data, on_epoch=on_epoch)

    monkeypatch.setattr(seedrun, "train", counted)
    code, out, err = call(retrain_cmd.main, ["--storage", str(db), "--final-seeds", "2"], capsys)
    assert code == 0, err
    assert trained == [(1, 2)]  # 2 epochs as the search's final retrain; seed 0 reused, only seed 1 trained
    assert "epoch 2/2" in out  # it talks while it trains, as search.run does
    assert "2 epochs (stored with the study)" in out and f"outputs in {results}/ (stored with the study)" in out
    record = json.loads((results / "final.json").read_text())
    assert record["seeds"]["seeds"] == [0, 1] and record["seeds"]["test_accs"][0] == winner["test_acc"]
    assert not (elsewhere / "results").exists()  # nothing written where the command ran

    other = next(t for t in _trained_trials(db) if t != winner["trial"])
    before = digests(results)
    trained.clear()
    code, out, err = call(retrain_cmd.main, ["--storage", str(db), "--trial", str(other)], capsys)
    assert code == 0, err
    assert digests(results) == before  # the winner's files, byte for byte
    mine = json.loads((results / f"trial-{other}" / "final.json").read_text())
    assert mine["trial"] == other and mine["epochs"] == 2 and trained == [(0, 2)]
    assert f"trial-{other}/" in out

    def stop(genome, config, data, on_epoch=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(seedrun, "train", stop)
    code, out, err = call(retrain_cmd.main, ["--storage", str(db), "--final-seeds", "3"], capsys)
    assert code == 130 and err.strip().splitlines()[-1] == (
        f"interrupted during the final retrain: the finished runs and the last finished epoch are in {results}/runs/; "
        "run the same command to resume")
    # the Python entry: the winner with its weights, normalisation and class names, from anywhere
    from search.best import load_best
    from train.data import load_digits32
    from train.engine import evaluate

    best = load_best(storage=str(db))
    digits = load_digits32()
    assert best.trial == winner["trial"] and best.classes == digits.classes and not best.model.training
    acc = evaluate(best.model, digits.x_test, digits.y_test, best.mean.flatten().tolist(), best.std.flatten().tolist())[1]
    assert acc == pytest.approx(best.test_acc, abs=1e-6) and best.test_acc == winner["test_acc"]
    report = (results / f"trial-{other}" / "report.md").read_text()
    assert f"## Trial {other}, retrained by request (the winner is trial {winner['trial']})" in report
    assert "## Winner" not in report


def _trained_trials(db: Path) -> list[int]:
    import optuna
    study = optuna.load_study(study_name="digits-nas", storage=f"sqlite:///{db}")
    return [t.number for t in study.get_trials() if t.values and t.user_attrs.get("trained")]


@pytest.mark.parametrize("flags, text", [
    (["--out", "afile"], "--out afile: afile is a file, not a folder"),
    (["--compare", "study:missing"], "--compare study:missing: no study 'missing' in "),
    (["--final-seeds", str(10 ** 12)], "--final-seeds must lie in 1..100"),
    (["--subset-train", "100000"], "--subset-train 100,000 asks for more images than digits has (1,347)"),
])
def test_a_final_phase_that_cannot_run_fails_in_one_line_before_the_first_trial(tmp_path, capsys, monkeypatch,
                                                                               flags, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    t0 = time.monotonic()
    code, out, err = call(run_cmd.main, ["--dataset", "digits", "--trials", "2", *flags], capsys)
    assert code == 2 and err.startswith(f"error: {text}") and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - t0 < 60 and "trial" not in out  # nothing trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no study, no output folder


def test_the_final_phase_plan_is_said_before_the_search_with_its_nets_seeds_and_cost(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "digits", "--trials", "1", "--trial-epochs", "1", "--final-epochs", "2", "--final-seeds", "2",
            "--max-params", "100000", "--no-presets", "--quiet"]
    code, out, err = call(run_cmd.main, [*argv, "--compare", "seed003_net"], capsys)
    assert code == 0, err
    plan = next(line for line in out.splitlines() if line.startswith("final phase:"))
    assert plan.startswith("final phase: the winner + 1 baseline (seed003_net) x 2 seeds x 2 epochs on 1,347 images "
                           f"= {2 * 2 * 2 * 1347:,} image-epochs")
    assert out.index("final phase:") < out.index("\ntrial ")  # before the first trial line
    code, out, err = call(run_cmd.main, [*argv, "--compare", "seed003_net"], capsys)  # resumed: speed is known now
    plan = next(line for line in out.splitlines() if line.startswith("final phase:"))
    assert "images/s" in plan and "min at the trials'" in plan


def test_a_second_final_phase_of_the_same_study_waits_for_the_first_and_reuses_its_runs(tmp_path):
    import threading

    import search.final as final
    from search.loop import Search
    from train.data import make_synthetic
    from tests.search_helpers import FakeTrain, final_run, memory_study, settings

    s = settings(max_params=100_000)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=3), 1, log=lambda _: None).run()
    lines: list[str] = []
    run = final_run(study, s, make_synthetic(64, 32), tmp_path, 3, log=lines.append)
    other = final.final_lock(run)  # another process's final phase holds it (flock: one per open file)
    assert other.acquire(blocking=False)
    done = []
    t = threading.Thread(target=lambda: done.append(final.retrain_and_compare(run)))
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and not done  # waiting, not training
    assert any("running in another process" in line for line in lines)
    other.release()
    t.join(timeout=120)
    assert done and done[0]["trial"] == 0 and (tmp_path / "final.json").is_file()
    assert final.retrain_and_compare(run).get("reused")  # the next one finds it done: nothing trained twice


def test_a_leaderboard_without_a_latency_table_has_no_always_empty_latency_column():
    from search.loop import Search
    from search.trials import leaderboard
    from tests.search_helpers import FakeTrain, memory_study, settings

    s = settings(max_params=100_000)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=3), 2, log=lambda _: None).run()
    board = leaderboard(study)
    assert "latency_ms" not in board.columns and {"params", "macs", "val_acc"} <= set(board.columns)


def test_compare_png_does_not_stretch_a_gap_within_noise_over_the_whole_axis():
    from search.plots import MIN_SPAN, compare_xlim

    lo, hi = compare_xlim([0.7771, 0.7789, 0.7743, 0.7795])  # a 0.5-point spread: shown within 2 points
    assert hi - lo >= MIN_SPAN and lo < 0.7743 and hi > 0.7795
    lo, hi = compare_xlim([0.60, 0.78])  # a real gap keeps its own scale, with a margin
    assert lo < 0.60 and hi > 0.78 and hi - lo < 0.25


def test_resuming_with_rules_nothing_meets_says_the_study_was_created_with_other_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = ["--dataset", "synthetic", "--trials", "1", "--trial-epochs", "1", "--no-final", "--quiet"]
    code, _, err = call(run_cmd.main, [*tiny, "--max-params", "100000"], capsys)
    assert code == 0, err
    code, _, err = call(run_cmd.main, [*tiny, "--max-params", "500"], capsys)
    assert code == 2 and "was created with other settings (max_params: 100000 -> 500)" in err
    assert "relax the constraints" not in err
    code, _, err = call(run_cmd.main, [*tiny, "--max-params", "500", "--study-name", "new"], capsys)
    assert code == 2 and err.strip().endswith("relax the constraints")  # a new study: the rules themselves
    assert not (tmp_path / "results" / "new.db").exists()


def test_every_trained_trials_params_rebuild_its_genome_and_name_only_choices_its_net_has():
    # Optuna sees what was built: TPE and optuna-dashboard learn from the choices the nets have (space 3).
    import optuna

    from search.loop import Search
    from search.trials import genome_of
    from space import SPACE_VERSION, construct
    from tests.search_helpers import FakeTrain, memory_study, settings
    from tests.test_searchspace import _not_in_the_net

    s = settings(max_params=100_000)
    assert s.space == SPACE_VERSION == 3
    study = memory_study(s, presets=False)
    Search(study, s, 10, FakeTrain(epochs=2), 16, log=lambda _: None).run()  # 10 random, then TPE's proposals
    trained = [t for t in study.get_trials() if t.user_attrs.get("trained")]
    assert len(trained) == 16
    for t in trained:
        g = genome_of(t)
        rebuilt = construct(optuna.trial.FixedTrial(t.params), s.rules, 10, s.construction, s.space).genome
        assert rebuilt == g and not _not_in_the_net(t.params, g), (t.number, t.params)


def test_the_report_ranks_the_choices_by_importance_and_the_one_the_accuracy_follows_comes_first(tmp_path):
    # Here the accuracy follows one choice alone, the head's dropout (the `dropout` param): Optuna's default
    # evaluator must put it first, and the report show the table.
    import optuna

    from search.loop import Search
    from search.report import param_importance, write_report
    from tests.search_helpers import FakeResult, Stats, memory_study, settings

    def train(genome, on_epoch):
        acc = 0.3 + 4 * genome.head.dropout  # dropout 0, 0.05 or 0.1
        on_epoch(Stats(1, acc))
        return FakeResult("completed", [Stats(1, acc)])

    s = settings(max_params=100_000, trial_epochs=1)
    study = memory_study(s, presets=False)
    Search(study, s, 10, train, 30, log=lambda _: None).run()
    importance = param_importance(study)
    assert importance and abs(sum(importance.values()) - 1) < 1e-6
    assert next(iter(importance)) == "dropout" and importance["dropout"] > 0.5
    report = write_report(study, tmp_path)["report"].read_text()
    assert "### Parameter importance" in report and f"| {next(iter(importance))} |" in report


def test_the_payoff_table_of_one_seed_says_1_seed():
    from search.report import _payoff

    row = {"name": "winner", "origin": "trial 3", "params": 1000, "macs": 2_000_000, "rf": 50, "val_acc": 0.9,
           "test_accs": [0.91], "mean": 0.91, "std": None, "min": 0.91, "max": 0.91, "n": 1}
    text = "\n".join(_payoff({"compare": [row, {**row, "name": "seed001", "vs_winner": None}], "epochs": 2}))
    assert "(1 seed)" in text and "(1 seeds)" not in text


def test_a_study_name_baseline_is_found_in_its_own_storage_file_beside_the_studys(tmp_path):
    # the random-search control as docs/search.md writes it: --compare study:NAME, NAME searched with its default
    # storage (results/NAME.db), no --compare-storage
    import optuna

    from search.compare import resolve_entrants
    from search.loop import Search
    from search.study import open_study, make_pruner
    from search.trials import genome_of, pick_trial
    from train.data import make_synthetic
    from tests.search_helpers import FakeTrain, final_run, settings

    s = settings(max_params=100_000)
    studies = {}
    for name in ("main", "control"):
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}.db")
        studies[name], _ = open_study(storage, name, s, make_pruner("none", 3))
        Search(studies[name], s, 10, FakeTrain(epochs=3), 2, log=lambda _: None).run()
    run = final_run(studies["main"], s, make_synthetic(16, 8), tmp_path / "out", 1)
    run.storage = f"sqlite:///{tmp_path / 'main.db'}"
    got = resolve_entrants(run, ["study:control"], None)
    assert [(e.name, e.genome) for e in got] == [("control winner", genome_of(pick_trial(studies["control"])))]
