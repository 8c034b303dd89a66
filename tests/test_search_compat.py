"""Studies written by earlier versions still resume: tests/fixtures/study_6713a61.db holds two small digits
studies made by commit 6713a61 (one with --max-macs 6000000, so that some candidates were rejected; one with
--objectives accuracy,params). Each test works on a copy in tmp_path, never on the fixture itself."""
from __future__ import annotations

import json
import shutil

import optuna
import pytest

from search import retrain as retrain_cmd
from search import run as run_cmd
from search.lifecycle import classify
from tests.search_helpers import ROOT
from tests.test_search_cli import call

FIXTURE = ROOT / "tests" / "fixtures" / "study_6713a61.db"
# The flags the fixture was made with (besides --trials, --no-final, --storage and --out).
SINGLE = ["--dataset", "digits", "--study-name", "fixture-6713a61", "--max-macs", "6000000", "--trial-epochs", "1",
          "--subset-train", "400"]
MULTI = ["--dataset", "digits", "--study-name", "fixture-6713a61-mo", "--objectives", "accuracy,params",
         "--trial-epochs", "1", "--subset-train", "400"]


@pytest.fixture
def old_db(tmp_path):
    db = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, db)
    return db


def _trials(db, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


def test_a_study_written_by_6713a61_resumes_trains_one_more_and_retrains(old_db, tmp_path, capsys):
    before = _trials(old_db, "fixture-6713a61")
    assert sum(classify(t) == "rejected" for t in before) > 0  # the fixture holds rejected trials
    assert sum(classify(t) in ("completed", "pruned") for t in before) == 2
    code, out, err = call(run_cmd.main, [*SINGLE, "--trials", "3", "--no-final", "--storage", str(old_db),
                                         "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0, err
    assert "resumed" in out and "error" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trained"] == 3
    after = _trials(old_db, "fixture-6713a61")
    assert sum(classify(t) in ("completed", "pruned") for t in after) == 3
    # Its rejected trials are still read as rejected, with their reasons.
    assert {t.number for t in before if classify(t) == "rejected"} <= {t.number for t in after if classify(t) == "rejected"}
    code, out, err = call(retrain_cmd.main, ["--storage", str(old_db), "--study-name", "fixture-6713a61",
                                             "--final-epochs", "1", "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert (tmp_path / "r" / "best_model.pt").exists()
    record = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["test_acc"] == record["test_acc"] and record["trial"] == final["trial"]
    n = record["n_test"]  # a share of the test images: a whole count of correct ones
    assert n > 0 and abs(final["test_acc"] * n - round(final["test_acc"] * n)) < 1e-3  # float32 figure


def test_a_multi_objective_study_written_by_6713a61_resumes(old_db, tmp_path, capsys):
    code, out, err = call(run_cmd.main, [*MULTI, "--trials", "2", "--no-final", "--storage", str(old_db),
                                         "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0, err
    assert "resumed" in out
    assert json.loads(out.strip().splitlines()[-1])["trained"] == 2


def test_the_old_study_with_other_settings_is_still_refused_in_one_line(old_db, tmp_path, capsys):
    code, _, err = call(run_cmd.main, [*SINGLE, "--seed", "1", "--trials", "3", "--no-final", "--storage",
                                       str(old_db), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "seed: 0 -> 1" in lines[0], err


def test_settings_stored_by_a_later_layout_are_refused_in_one_line():
    from search.settings import SCHEMA, SearchError, migrate
    from tests.search_helpers import settings

    stored = settings().to_dict()
    assert stored["schema"] == SCHEMA and migrate(stored) == stored  # today's layout passes unchanged
    with pytest.raises(SearchError, match=rf"later version of tinynas \(layout {SCHEMA + 1}, this one reads up to "):
        migrate({**stored, "schema": SCHEMA + 1})


def test_a_stored_recipe_that_lacks_a_later_setting_gets_the_value_it_trained_with_then():
    # Compatibility is the fields' BEFORE tags (train.recipe), not a patch per setting in migrate.
    from train.recipe import before_values
    from search.settings import SearchSettings, migrate
    from tests.search_helpers import settings

    stored = settings().to_dict()
    tagged = before_values()
    assert tagged  # the check below has settings to check
    for name, before in tagged.items():
        older = {**stored, "recipe": {k: v for k, v in stored["recipe"].items() if k != name}}
        assert migrate(older)["recipe"][name] == before
        assert dict(SearchSettings.from_dict(older).recipe)[name] == before
    # schema 1 (no recipe stored at all): every tagged setting at its value from before
    schema1 = {k: v for k, v in stored.items() if k not in ("schema", "recipe", "sampler")}
    assert all(migrate(schema1)["recipe"][k] == v for k, v in tagged.items())
