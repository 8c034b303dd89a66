"""--sampler: every sampler drives the search under the rules (through ask/tell, no training), is stored with
the study and kept on resume; another one on resume is refused."""
from __future__ import annotations

import optuna
import pytest

from search import run as run_cmd
from search.lifecycle import classify
from search.loop import Search
from search.settings import SearchSettings, migrate
from search.study import SAMPLERS, make_sampler, stored_settings
from space import Genome, check
from tests.search_helpers import TINY, FakeTrain, memory_study, settings
from tests.search_helpers import call, one_error_line

EXPECTED = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "gp": optuna.samplers.GPSampler, "nsga2": optuna.samplers.NSGAIISampler,
            "qmc": optuna.samplers.QMCSampler}


def test_every_name_makes_its_sampler_and_an_unknown_one_is_refused():
    assert set(SAMPLERS) == set(EXPECTED)
    for name, cls in EXPECTED.items():
        assert type(make_sampler(name, 0)) is cls
    with pytest.raises(Exception, match="unknown sampler 'cmaes'; choose one of: tpe, random, gp, nsga2, qmc"):
        make_sampler("cmaes", 0)


@pytest.mark.parametrize("objectives", ["accuracy", "accuracy,params"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_searches_under_the_rules(name, objectives):
    # 100k parameters: most of the space is infeasible, so the rules and the sampler meet often. 14 trained:
    # past the model-based samplers' 10 startup trials, so their models (and constraint handling) run too.
    s = settings(max_params=100_000, sampler=name, objectives=objectives)
    study = memory_study(s, presets=False)
    assert type(study.sampler) is EXPECTED[name]
    fake = FakeTrain(epochs=2)
    counts = Search(study, s, 10, fake, 14, log=lambda _: None).run()
    assert counts.trained == 14 and counts.failed == 0
    trained = [t for t in study.get_trials() if classify(t) in ("completed", "pruned")]
    assert len(trained) == 14
    for t in trained:  # nothing that breaks the rules was trained, whatever the sampler proposed
        assert check(Genome.from_json(t.user_attrs["genome"]), s.rules) == []
    assert len(set(fake.calls)) == len(fake.calls)  # no genome trained twice


def test_settings_of_the_layout_before_the_sampler_resume_as_tpe():
    stored = {k: v for k, v in settings().to_dict().items() if k != "sampler"}
    stored["schema"] = 2
    assert migrate(stored)["sampler"] == "tpe"
    assert SearchSettings.from_dict(stored) == settings(sampler="tpe")


def test_a_random_search_and_a_gp_search_resume_and_refuse_another_sampler(capsys, tmp_path):
    for name in ("random", "gp"):
        db, out = tmp_path / f"{name}.db", tmp_path / name
        # --no-presets: the sampler proposes every candidate (the presets would be the first three)
        base = [*TINY, "--no-final", "--no-presets", "--storage", str(db), "--out", str(out)]
        code, text, err = call(run_cmd.main, [*base, "--trials", "2", "--sampler", name], capsys)
        assert code == 0, err
        assert f"sampler {name}, pruner" in text
        # the same command with more trials resumes; so does one without --sampler (the study keeps its own)
        code, text, err = call(run_cmd.main, [*base, "--trials", "3"], capsys)
        assert code == 0, err
        assert "(resumed)" in text and f"sampler {name}, pruner" in text
        study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
        assert stored_settings(study).sampler == name
        assert sum(classify(t) in ("completed", "pruned") for t in study.trials) == 3
        code, _, err = call(run_cmd.main, [*base, "--trials", "4", "--sampler", "tpe"], capsys)
        assert code == 2
        one_error_line(err, f"(sampler: '{name}' -> 'tpe')")


def test_an_unknown_sampler_is_one_error_line_and_writes_nothing(capsys, tmp_path):
    code, _, err = call(run_cmd.main, [*TINY, "--sampler", "grid", "--storage", str(tmp_path / "s.db")], capsys)
    assert code == 2
    one_error_line(err, "unknown sampler 'grid'; choose one of: tpe, random, gp, nsga2, qmc")
    assert list(tmp_path.iterdir()) == []
