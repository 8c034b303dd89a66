"""Did the search pay off (issue 34): the winner from several seeds, and baselines under the same final recipe."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
from scipy import stats

import search.seedrun as seedrun
import search.final as final
from search.cli import parse_compare
from search.compare import paired, resolve_entrants, seed_stats, verdict
from search.loop import Search
from search.settings import SearchError
from search.trials import genome_of, pick_trial, trained_val_acc
from space import PRESETS, check
from train.data import make_synthetic
from train.engine import train
from train.testset import score_test_set
from tests.search_helpers import TINY, FakeTrain, final_run, memory_study, run_main, settings


def quiet(_line: str) -> None:
    pass


def searched(n: int = 3, **changes):
    """A study of `n` trained trials (fake training) under 100k parameters: seed003_net is its only
    feasible preset, seed001 (155k) and seed003_dilated (198k) break its rules."""
    s = settings(max_params=100_000, **changes)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=3), n, log=quiet).run()
    return s, study


DATA = dict(n_train=128, n_test=64)


def test_every_seed_and_baseline_figure_is_that_of_its_own_run(tmp_path):
    s, study = searched()
    data = make_synthetic(**DATA)
    record = final.retrain_and_compare(final_run(study, s, data, tmp_path, 2, seeds=2, compare=("seed001",)))
    winner = genome_of(pick_trial(study, record["trial"]))
    row = {r["name"]: r for r in record["compare"]}["seed001"]
    figures = [*record["seeds"]["test_accs"], *row["test_accs"]]
    # each figure again, trained outside the tool from the study's recipe and the seed
    for genome, seed, got in [(winner, 1, figures[1]), (PRESETS["seed001"], 0, figures[2]),
                              (PRESETS["seed001"], 1, figures[3])]:
        result = train(genome, replace(s.train_config(2, "cpu", eval_every=-1), seed=seed), data)
        assert score_test_set(result.model, data, torch.device("cpu")).acc == got
    assert len(set(figures)) > 1  # the seeds and nets do differ: the comparison above could fail
    assert figures[0] == record["test_acc"] and record["seeds"]["seeds"] == [0, 1] == row["seeds"]
    assert record["seeds"]["exported_seed"] == 0
    w, b = np.array(figures[:2]), np.array(figures[2:])
    assert (record["seeds"]["mean"], record["seeds"]["std"]) == pytest.approx((w.mean(), w.std(ddof=1)))
    assert (row["mean"], row["min"], row["max"]) == pytest.approx((b.mean(), b.min(), b.max()))
    assert row["vs_winner"]["diff"] == pytest.approx((w - b).mean())
    assert "parameters" in row["breaks"]  # named explicitly, so retrained although it breaks the rules
    assert json.loads((tmp_path / final.FINAL_JSON).read_text())["compare"] == record["compare"]


def test_a_retrain_asked_for_more_seeds_trains_only_the_new_ones_and_an_interrupted_one_resumes(tmp_path,
                                                                                                 monkeypatch):
    s, study = searched()
    data = make_synthetic(**DATA)
    def plan(seeds):
        return final_run(study, s, data, tmp_path, 1, seeds=seeds, compare=("seed001",))

    first = final.retrain_and_compare(plan(1))
    trained = []
    real = seedrun.train

    def counted(genome, config, data, on_epoch=None):
        trained.append((genome.summary(), config.seed))
        if len(trained) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second new run
        return real(genome, config, data)

    monkeypatch.setattr(seedrun, "train", counted)
    with pytest.raises(KeyboardInterrupt):
        final.retrain_and_compare(plan(2))
    assert trained == [(first["summary"], 1), (PRESETS["seed001"].summary(), 1)]
    trained.clear()
    again = final.retrain_and_compare(plan(2))
    assert trained == [(PRESETS["seed001"].summary(), 1)]  # only the interrupted run
    assert again["compare"][1]["test_accs"][0] == first["compare"][1]["test_accs"][0]
    assert again["seeds"]["n"] == 2 and "reused" not in again
    trained.clear()
    assert final.retrain_and_compare(plan(2))["reused"] and not trained


def test_the_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    w, b = [0.71, 0.73, 0.70, 0.74], [0.70, 0.70, 0.69, 0.71]
    p = paired(w, b)
    d = np.subtract(w, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (p["diff"], p["ci_low"], p["ci_high"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert p["p"] == pytest.approx(stats.ttest_rel(w, b).pvalue) and verdict(p) == "winner better"
    assert verdict(paired([0.70, 0.72, 0.71], [0.71, 0.70, 0.71])) == "within noise"
    assert verdict(paired(b, w)) == "winner worse"
    one = paired([0.9], [0.8])
    assert one["ci_low"] is None and one["p"] is None and verdict(one) == "one seed: cannot tell"
    same = paired([0.9978, 0.9956], [0.9933, 0.9911])  # the same difference at both seeds (float32 k/n)
    assert same["ci_low"] is None and verdict(same) == "no spread over seeds: cannot test"
    assert seed_stats([0.5])["std"] is None and seed_stats([0.5, 0.7])["std"] == pytest.approx(0.1414, abs=1e-4)


def entrants(names, study, s, winner, num_classes=10, other_storage=None):
    """resolve_entrants for a study's run on data of `num_classes` classes; study:NAME looked up in other_storage."""
    run = final_run(study, s, make_synthetic(16, 8, num_classes=num_classes), ".", 1)
    if other_storage is not None:
        run.compare_storage = lambda name: other_storage
    return resolve_entrants(run, names, winner)


def test_the_default_baselines_are_the_presets_that_meet_the_rules_and_never_the_winner_itself():
    s, study = searched()
    winner = genome_of(pick_trial(study))
    feasible = [n for n, g in PRESETS.items() if not check(g, s.rules)]
    assert feasible == ["seed003_net"]
    got = entrants(parse_compare(None), study, s, winner, 10)
    assert [e.name for e in got] == ([] if winner == PRESETS["seed003_net"] else ["seed003_net"])
    assert entrants(parse_compare("seed003_net"), study, s, PRESETS["seed003_net"], 10) == []
    if got:  # trained as the study's first trial: its search accuracy comes along
        assert got[0].origin == "preset (trial 0)" and got[0].val_acc is not None
    assert parse_compare("none") == [] and parse_compare(" seed001,seed001 ") == ["seed001"]
    with pytest.raises(SearchError, match="--compare: 'seed9'"):
        parse_compare("seed001,seed9")
    with pytest.raises(SearchError, match="no trial 999"):
        entrants(["999"], study, s, winner, 10)
    with pytest.raises(SearchError, match="10 classes, the data has 3"):
        entrants(["seed001"], study, s, winner, 3)


def test_another_studys_winner_joins_the_table_from_its_own_storage():
    s, study = searched()
    other_storage = optuna.storages.InMemoryStorage()
    control = memory_study(s, storage=other_storage)  # named "test" there too
    Search(control, s, 10, FakeTrain(epochs=3), 2, log=quiet).run()
    control_winner = pick_trial(control)
    got = entrants(["study:test"], study, s, PRESETS["seed001"], 10, other_storage)
    assert [(e.name, e.origin, e.genome) for e in got] == [
        ("test winner", f"study test, trial {control_winner.number}", genome_of(control_winner))]
    with pytest.raises(SearchError, match="no study 'nope'"):
        entrants(["study:nope"], study, s, PRESETS["seed001"], 10, other_storage)
    other = [t for t in control.trials if trained_val_acc(t) is not None and t.number != control_winner.number][0]
    got = entrants([f"study:test#{other.number}"], study, s, PRESETS["seed001"], 10, other_storage)
    assert [(e.name, e.origin, e.genome, e.val_acc) for e in got] == [
        (f"test trial {other.number}", f"study test, trial {other.number}", genome_of(other), trained_val_acc(other))]
    with pytest.raises(SearchError, match="no trial 999"):
        entrants(["study:test#999"], study, s, PRESETS["seed001"], 10, other_storage)
    assert parse_compare("study:a#3,study:b") == ["study:a#3", "study:b"]
    for bad in ("study:a#x", "study:#3", "study:"):
        with pytest.raises(SearchError, match="--compare: "):
            parse_compare(bad)
    digits_storage, d = optuna.storages.InMemoryStorage(), replace(s, dataset="digits")
    Search(memory_study(d, storage=digits_storage), d, 10, FakeTrain(epochs=3), 1, log=quiet).run()
    with pytest.raises(SearchError, match="searched digits"):
        entrants(["study:test"], study, s, PRESETS["seed001"], 10, digits_storage)


def test_two_compare_names_for_one_net_make_one_row_that_names_both():
    """Another study's trial that is a preset's warm start is the preset: one net, retrained once, and the
    other name is kept as an alias (final.py says so), never silently lost."""
    s, study = searched()
    other_storage = optuna.storages.InMemoryStorage()
    control = memory_study(s, storage=other_storage)  # warm-started with the presets, as a search is
    Search(control, s, 10, FakeTrain(epochs=3), 2, log=quiet).run()
    twin = next(t for t in control.trials if trained_val_acc(t) is not None and genome_of(t) == PRESETS["seed003_net"])
    got = entrants(["seed003_net", f"study:test#{twin.number}", "seed001"], study, s, PRESETS["seed001"], 10,
                   other_storage)
    assert [(e.name, e.aliases) for e in got] == [("seed003_net", (f"test trial {twin.number}",))]


def test_search_run_final_seeds_and_compare_write_the_table_and_every_seed(tmp_path):
    out = tmp_path / "o"
    r = run_main("search.run", *TINY, "--trials", "2", "--storage", str(tmp_path / "s.db"), "--out", str(out),
                 "--final-seeds", "2", "--compare", "seed001", "--quiet", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    record = json.loads((out / "final.json").read_text())
    assert summary["test_acc_seeds"] == record["seeds"]["test_accs"] and len(record["seeds"]["test_accs"]) == 2
    report = (out / "report.md").read_text()
    assert "Did the search pay off?" in report and "(2 seeds)" in report and "plots/compare.png" in report
    row = next(line for line in report.splitlines() if line.startswith("| seed001 |"))
    b = record["compare"][1]
    assert f"{b['mean']:.4f} +- {b['std']:.4f}" in row and "breaks the rules" in row
    assert (out / "plots" / "compare.png").stat().st_size > 0
    assert "over 2 seeds" in report and "exported weights are seed 0's" in report


@pytest.mark.parametrize("flags, message", [(["--compare", "seed9"], "--compare: 'seed9'"),
                                            (["--final-seeds", "0"], "--final-seeds must be a positive integer")])
def test_a_bad_compare_or_final_seeds_is_one_error_line_before_anything_is_made(tmp_path, flags, message):
    r = run_main("search.run", *TINY, "--trials", "1", "--storage", str(tmp_path / "s.db"), *flags)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"]
    assert message in r.stderr and not (tmp_path / "s.db").exists()
