"""--max-macs, --objectives and the Pareto front, through ask/tell with a fake training function."""
from __future__ import annotations

import functools
import json
import re

import optuna
import pytest
from optuna.study import StudyDirection

from search import retrain as retrain_cmd
from search import run as run_cmd
from search.lifecycle import classify
from search.settings import parse_objectives
from search.trials import pareto_front
from search.loop import Search
from search.settings import SearchError, SearchSettings
from search.study import make_pruner, open_study
from search.trials import best_trial, genome_of, leaderboard, pareto_trials
from space import PRESETS, Genome, Rules, RulesError, analyze, check, check_satisfiable, constraint_values
from tests.search_helpers import FakeResult, FakeTrain, Stats, fake_accuracy, final_run, memory_study, settings
from tests.search_helpers import call, one_error_line
from train.engine import TrainConfig


def quiet(_line: str) -> None:
    pass


def run_search(study, s, train, n):
    return Search(study, s, 10, train, n, log=quiet).run()


def constant(genome, on_epoch):
    """Every net reaches the same accuracy: only the costs separate them."""
    on_epoch(Stats(1, 0.5))
    return FakeResult("completed", [Stats(1, 0.5)])


def test_max_macs_rejects_candidates_over_the_budget_without_training_them():
    s = settings(max_macs=10_000_000)
    study, fake = memory_study(s), FakeTrain(epochs=1)
    run_search(study, s, fake, 6)
    trials = study.get_trials()
    over = [t for t in trials if t.user_attrs["macs"] > 10_000_000]
    assert over and all(classify(t) == "rejected" for t in over)
    for t in over:
        assert f"{t.user_attrs['macs']:,} MACs > 10,000,000" in t.user_attrs["rejected"]
        assert t.constraints["macs"] == pytest.approx(t.user_attrs["macs"] / 10_000_000 - 1) and t.constraints["macs"] > 0
        assert t.user_attrs["genome"] not in fake.calls
    assert by_preset(trials)["seed003_net"].user_attrs["rejected"] == "13,728,256 MACs > 10,000,000"
    for js in fake.calls:
        assert analyze(Genome.from_json(js)).macs <= 10_000_000
    assert {"params", "rf", "dsc", "dilation", "macs"} == set(trials[0].constraints)
    assert "macs" not in constraint_values(PRESETS["seed001"], Rules(200_000, 44))  # no --max-macs, no constraint


def by_preset(trials):
    return {t.user_attrs["preset"]: t for t in trials if "preset" in t.user_attrs}


def test_peak_activations_are_recorded_per_candidate():
    s = settings(max_params=100_000)
    study = memory_study(s)
    run_search(study, s, FakeTrain(epochs=1), 2)
    for t in study.get_trials():
        assert t.user_attrs["peak_act"] == analyze(genome_of(t)).peak_activations
    board = leaderboard(study)
    assert (board.peak_act == board.number.map({t.number: t.user_attrs["peak_act"] for t in study.get_trials()})).all()


def test_multi_objective_study_tells_accuracy_and_the_analytic_cost_and_never_prunes():
    s = settings(objectives="accuracy,params", trial_epochs=3, max_params=100_000)
    study, fake = memory_study(s), FakeTrain(epochs=3)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    counts = run_search(study, s, fake, 8)
    assert counts.trained == 8 and counts.pruned == 0 and counts.epochs == 8 * 3
    assert fake.finished == fake.calls  # every trained candidate ran all its epochs
    for t in study.get_trials():
        k = classify(t)
        if k == "rejected":  # told like a single-objective rejection: PRUNED, no values, infeasible for TPE
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert max(t.constraints.values()) > 0 and t.user_attrs["genome"] not in fake.calls
            continue
        assert t.values[1] == t.user_attrs["n_params"]
        if k == "completed":
            assert t.values[0] == pytest.approx(fake_final(t)) and max(t.constraints.values()) <= 0


def fake_final(t):
    return fake_accuracy(genome_of(t))  # the last epoch of FakeTrain's curve


def dominated(t, others) -> bool:
    a, c = t.values
    return any(o.values[0] >= a and o.values[1] <= c and tuple(o.values) != (a, c) for o in others)


def test_pareto_column_is_exactly_the_non_dominated_feasible_completed_trials():
    s = settings(objectives="accuracy,macs")
    study = memory_study(s)
    run_search(study, s, FakeTrain(epochs=1), 12)
    done = [t for t in study.get_trials() if classify(t) == "completed"]
    expected = {t.number for t in done if not dominated(t, done)}
    board = leaderboard(study)
    assert set(board[board.pareto].number) == expected == {t.number for t in pareto_trials(study.get_trials())}
    assert expected and not board[board.state != "completed"].pareto.any()
    best = best_trial(study.get_trials())
    assert best.number in expected and best.values[0] == max(t.values[0] for t in done)


def test_multi_objective_winner_is_the_front_member_with_the_best_accuracy():
    # All presets reach the same accuracy. seed001 has more parameters than seed003_net (155k > 84k) but
    # fewer MACs (7.6 M < 13.7 M): minimising MACs it dominates seed003_net, which wins on parameters.
    winners = {}
    for objectives in ("accuracy", "accuracy,params", "accuracy,macs"):
        s = settings(objectives=objectives)
        study = memory_study(s)
        run_search(study, s, constant, 3)
        winners[objectives] = by_preset([best_trial(study.get_trials())])
        front = {t.user_attrs["preset"] for t in pareto_trials(study.get_trials())}
        assert front == ({"seed001"} if objectives == "accuracy,macs" else {"seed003_net"})
    assert [list(w) for w in winners.values()] == [["seed003_net"], ["seed003_net"], ["seed001"]]


def test_objectives_and_max_macs_are_stored_settings_and_a_resume_with_others_is_refused():
    storage = optuna.storages.InMemoryStorage()
    open_study(storage, "s", settings(max_macs=20_000_000), make_pruner("none", 3))
    with pytest.raises(SearchError, match=r"max_macs: 20000000 -> None"):
        open_study(storage, "s", settings(), make_pruner("none", 3))
    with pytest.raises(SearchError, match="--objectives accuracy"):
        open_study(storage, "s", settings(max_macs=20_000_000, objectives="accuracy,params"), make_pruner("none", 3))
    open_study(storage, "m", settings(objectives="accuracy,macs"), make_pruner("none", 3))
    with pytest.raises(SearchError, match="accuracy,macs"):
        open_study(storage, "m", settings(objectives="accuracy,params"), make_pruner("none", 3))
    _, created = open_study(storage, "m", settings(objectives="accuracy,macs"), make_pruner("none", 3))
    assert not created


def test_settings_stored_before_max_macs_and_objectives_existed_still_load():
    # As stored then: without those keys, and without the layout's version (schema 1).
    old = {k: v for k, v in settings().to_dict().items() if k not in ("max_macs", "objectives", "schema")}
    loaded = SearchSettings.from_dict(old)
    assert loaded == settings() and loaded.max_macs is None and loaded.objectives == "accuracy"
    with pytest.raises(SearchError, match="lack seed"):
        SearchSettings.from_dict({k: v for k, v in old.items() if k != "seed"})


def test_settings_stored_before_the_recipe_existed_load_as_their_trials_trained():
    from search.settings import _SCHEMA1_RECIPE
    stop18 = {k: v for k, v in settings().to_dict().items() if k not in ("recipe", "schema")}
    stop18["bias_lr_scale"] = 3.0  # stop 18 stored this one recipe setting on its own
    loaded = SearchSettings.from_dict(stop18)
    # the recipe of that time: written out, and the settings added since at their values from before
    assert dict(loaded.recipe) == {**_SCHEMA1_RECIPE, "anneal": "cos", "alternate_flip": False,
                                   "bn_refresh_steps": 0, "bias_lr_scale": 3.0}
    assert dict(loaded.recipe).keys() == TrainConfig().recipe().keys()  # a whole recipe, nothing left to defaults
    assert loaded.train_config(3, "cpu").bias_lr_scale == 3.0 and loaded.lr == settings().lr
    older = {k: v for k, v in stop18.items() if k != "bias_lr_scale"}
    assert dict(SearchSettings.from_dict(older).recipe)["bias_lr_scale"] == 1.0  # before that setting existed


def test_a_stored_recipe_survives_the_json_round_trip_and_later_default_changes(monkeypatch):
    s = settings().with_recipe(ema_decay=0.9, augment_start=None, **{"augment.cutout_size": 8})
    stored = json.loads(json.dumps(s.to_dict()))
    assert stored["recipe"]["ema_decay"] == 0.9 and stored["recipe"]["augment.cutout_size"] == 8
    import search.settings
    monkeypatch.setattr(search.settings, "TrainConfig", functools.partial(TrainConfig, ema_decay=0.5))
    assert dict(settings().recipe)["ema_decay"] == 0.5  # as if the default had changed since
    assert SearchSettings.from_dict(stored) == s and s.train_config(3, "cpu").ema_decay == 0.9
    newer = {**stored, "recipe": {**stored["recipe"], "lookahead": 5}}  # stored by a later version
    with pytest.raises(SearchError, match="stored recipe does not fit this version: unknown recipe settings: lookahead"):
        SearchSettings.from_dict(newer)


def test_trials_and_the_final_retrain_train_with_the_studys_recipe(monkeypatch):
    import train.engine
    from search.loop import make_train_fn
    seen = []
    monkeypatch.setattr(train.engine, "train", lambda genome, config, data, on_epoch=None: seen.append(config))
    s = settings(augment=True).with_recipe(bias_lr_scale=2.5, label_smoothing=0.0, **{"augment.rotate": 5.0})
    make_train_fn(None, s, "cpu")(PRESETS["seed003_net"], lambda s: False)
    assert seen[0].bias_lr_scale == 2.5 and seen[0].label_smoothing == 0.0 and seen[0].augment.rotate == 5.0
    assert seen[0].lr == s.lr and seen[0].epochs == s.trial_epochs
    final = s.train_config(60, "cpu", eval_every=-1)  # what search.final builds
    assert final.recipe() == seen[0].recipe() and final.epochs == 60
    assert settings().with_recipe(label_smoothing=0.0).train_config(3, "cpu").augment is None  # augment=False stays off


def test_a_resume_with_another_recipe_names_each_changed_setting():
    storage = optuna.storages.InMemoryStorage()
    open_study(storage, "s", settings().with_recipe(ema_decay=0.9), make_pruner("none", 3))
    with pytest.raises(SearchError, match=re.escape(f"(recipe.ema_decay: 0.9 -> {TrainConfig().ema_decay!r})")):
        open_study(storage, "s", settings(), make_pruner("none", 3))


def test_unsatisfiable_macs_budget_is_found_before_training():
    check_satisfiable(Rules(200_000, 44, 5_000_000))
    with pytest.raises(RulesError, match=r"--max-macs 10,000 .*the fewest MACs [\d,]+"):
        check_satisfiable(Rules(200_000, 44, 10_000))


def test_parse_objectives_and_the_front_of_points():
    assert parse_objectives("accuracy, macs") == "accuracy,macs"
    for bad in ("accuracy,foo", "params", "accuracy,params,macs", ""):
        with pytest.raises(SearchError, match="unknown --objectives"):
            parse_objectives(bad)
    # costs 1 2 2 3 4, accuracies .5 .4 .7 .7 .9: (2,.4) and (3,.7) are dominated
    assert pareto_front([1, 2, 2, 3, 4], [.5, .4, .7, .7, .9]) == [0, 2, 4]


@pytest.mark.parametrize("args, text", [
    (["--objectives", "accuracy,foo"], "unknown --objectives 'accuracy,foo'"),
    (["--objectives", "accuracy,params", "--pruner", "median"], "Optuna does not prune multi-objective studies"),
    (["--max-macs", "0"], "--max-macs must be a positive integer"),
    (["--max-macs", "lots"], "invalid int value"),
    (["--max-macs", "10000"], "no genome of the search space meets --max-params 200,000, --max-macs 10,000"),
])
def test_bad_objective_and_macs_flags_are_one_line_and_exit_2(args, text, capsys, tmp_path):
    argv = ["--dataset", "synthetic", "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "o"), *args]
    code, _, err = call(run_cmd.main, argv, capsys)
    assert code == 2
    one_error_line(err, text)
    assert not (tmp_path / "s.db").exists()  # refused before the study is created


def test_retrain_takes_any_trained_trial_and_refuses_a_rejected_one(capsys, tmp_path):
    from search.data import load_full
    from search.final import retrain_best

    db = tmp_path / "s.db"
    s = settings(objectives="accuracy,params", max_params=100_000, subset_train=128, batch_size=16, trial_epochs=1)
    study = memory_study(s, storage=optuna.storages.RDBStorage(f"sqlite:///{db}"))
    run_search(study, s, FakeTrain(epochs=1), 3)
    trials = study.get_trials()
    rejected = next(t for t in trials if classify(t) == "rejected")
    code, _, err = call(retrain_cmd.main, ["--storage", str(db), "--study-name", "test", "--trial",
                                           str(rejected.number), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    one_error_line(err, f"trial {rejected.number} is rejected: {rejected.user_attrs['rejected']}")
    code, _, err = call(retrain_cmd.main, ["--storage", str(db), "--study-name", "test", "--trial", "999"], capsys)
    assert code == 2
    one_error_line(err, "has no trial 999")
    # A trained trial that is not the default winner: retrained, and recorded as such.
    other = next(t for t in trials if classify(t) == "completed" and t.number != best_trial(trials).number)
    data = load_full("synthetic", None, 128, 64, seed=0)
    final = retrain_best(final_run(study, s, data, tmp_path / "o", 1, trial=other.number))
    assert final["trial"] == other.number and final["genome"] == genome_of(other).to_json()
    assert final["val_acc"] == other.values[0] and final["peak_act"] == analyze(genome_of(other)).peak_activations
    assert json.loads((tmp_path / "o" / "final.json").read_text())["trial"] == other.number
    assert check(genome_of(other), Rules(100_000, 44)) == []


def test_multi_objective_search_end_to_end_and_a_front_member_exports(tmp_path):
    import pandas as pd

    from tests.search_helpers import TINY, run_main

    db, out = tmp_path / "s.db", tmp_path / "out"
    r = run_main("search.run", *TINY, "--trials", "2", "--no-final", "--objectives", "accuracy,params",
                 "--storage", str(db), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert "multi-objective studies cannot be pruned" in r.stdout and "peak act" in r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    board = pd.read_csv(out / "leaderboard.csv")
    front = board[board.pareto]
    assert summary["trained"] == 2 and summary["pruned"] == 0 and summary["best_trial"] in set(front.number)
    assert (front.state == "completed").all() and board.peak_act.notna().all()
    report = (out / "report.md").read_text()
    assert "### Pareto front" in report and "objectives accuracy,params" in report
    member = int(front.number.iloc[-1])
    r = run_main("search.export", "--storage", str(db), "--study-name", "synthetic-nas", "--trial", str(member),
                 "-o", str(tmp_path / "m.py"))
    assert r.returncode == 0 and f"trial {member}" in r.stdout
