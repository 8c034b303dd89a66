"""The rules (space.Rules) through the commands: space.sample/describe flags, train.run's refusal, and a study
begun under the previous construction resuming with it."""
from __future__ import annotations

import json

import optuna
import pytest

from search import run as run_cmd
from search.loop import Search, SearchStopped
from search.settings import SearchError, SearchSettings
from search.study import make_pruner, open_study
from space import CONSTRUCTION_VERSION, Genome, Rules, analyze, check, construct
from space.genome import GenomeError
from tests.search_helpers import TINY, call, one_error_line, run_main, settings
from train import run as train_run
from train.data import DataError
from train.engine import TrainError

TRAIN_ERRORS = (GenomeError, DataError, TrainError)
# RF 25 (a stride-free stem, two stride-2 DSC layers, one dilation-2 DSC layer): breaks only the RF rule
SHALLOW = ('{"blocks": [[{"op": "conv3", "out": 16}], [{"op": "dsc3", "out": 24, "stride": 2}], '
           '[{"op": "dsc3", "out": 32, "stride": 2}], [{"op": "dsc3", "out": 32, "dilation": 2}]]}')


def test_sample_under_a_macs_cap_reports_the_feasible_share_and_keeps_the_cap():
    r = run_main("space.sample", "--n", "30", "--seed", "3", "--max-macs", "20000000")
    assert r.returncode == 0, r.stderr
    genomes = [Genome.from_json(line) for line in r.stdout.splitlines()]
    rules = Rules(max_macs=20_000_000)
    feasible = sum(not check(g, rules) for g in genomes)
    assert len(genomes) == 30 and all(analyze(g).macs <= 20_000_000 for g in genomes)
    assert f"30 genomes, {100 * feasible / 30:.1f} % feasible under <= 200,000 parameters, <= 20,000,000 MACs" in r.stderr
    r = run_main("space.sample", "--max-macs", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --max-macs must be a positive integer, got 0"]


def test_describe_takes_every_rule_as_a_flag(capsys):
    from space import describe
    code, out, _ = call(describe.main, ["seed003_net", "--json", "--max-macs", "10000000", "--min-rf", "60"], capsys)
    assert code == 0
    assert json.loads(out)["violations"] == ["13,728,256 MACs > 10,000,000", "RF 55 < 60"]


def test_train_run_refuses_a_genome_that_breaks_the_rules_unless_forced(tmp_path, capsys):
    out = tmp_path / "o"
    base = [SHALLOW, "--dataset", "synthetic", "--epochs", "1", "--subset", "128", "--batch-size", "16", "--quiet",
            "--out", str(out)]
    code, _, err = call(train_run.main, base, capsys, TRAIN_ERRORS)
    assert code == 2 and not out.exists()  # refused before anything was trained or written
    one_error_line(err, "breaks the rules", "RF 25 < 44", "--force")
    code, _, err = call(train_run.main, [*base, "--max-params", "1000", "--max-macs", "100000"], capsys, TRAIN_ERRORS)
    assert code == 2
    one_error_line(err, "parameters > 1,000", "MACs > 100,000", "RF 25 < 44")
    code, _, err = call(train_run.main, [*base, "--min-rf", "0"], capsys, TRAIN_ERRORS)
    assert code == 2
    one_error_line(err, "--min-rf must be a positive integer, got 0")
    code, _, err = call(train_run.main, [*base, "--min-rf", "25"], capsys, TRAIN_ERRORS)  # within the rules given
    assert code == 0, err
    code, _, err = call(train_run.main, [*base, "--force", "--out", str(tmp_path / "f")], capsys, TRAIN_ERRORS)
    assert code == 0 and "training despite the rules (--force): RF 25 < 44" in err
    assert (tmp_path / "f" / "metrics.json").exists()


def old_settings(s: SearchSettings) -> dict:
    """What a study begun before the construction version existed stored (search.settings at 6713a61: no
    construction, and no layout version either)."""
    return {k: v for k, v in s.to_dict().items() if k not in ("construction", "schema")}


def test_a_study_begun_under_construction_1_resumes_with_it(tmp_path, capsys):
    db = tmp_path / "s.db"
    cap = 5_000_000
    begun = SearchSettings.from_dict(old_settings(SearchSettings(
        dataset="synthetic", max_params=100_000, min_rf=44, trial_epochs=1, val_size=0.25, seed=0, subset_train=128,
        batch_size=16, lr=0.0125, augment=False, max_macs=cap)))
    assert begun.construction == 1
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study, _ = open_study(storage, "synthetic-nas", begun, make_pruner("none", 1))
    study.set_user_attr("settings", old_settings(begun))  # exactly as the old code stored it
    # 3 trained: a resumed run's sampler stream includes its pid (search.study.open_study), so its proposals vary
    # from run to run; about 1 first proposal in 45 fits construction 1 (45 of 2,000 random ones) and is trained
    # with no rejection before it, which left the check below nothing to count (seen once). Three in a row: ~1e-5.
    code, out, err = call(run_cmd.main, [*TINY, "--max-macs", str(cap), "--trials", "3", "--no-final", "--no-presets",
                                         "--storage", str(db), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert f"kept the settings it was begun with: construction 1 (default now {CONSTRUCTION_VERSION})" in out
    study = optuna.load_study(study_name="synthetic-nas", storage=f"sqlite:///{db}")
    assert SearchSettings.from_dict(study.user_attrs["settings"]).construction == 1
    rules, rejected_v1_only = Rules(100_000, 44, cap), 0
    for t in study.trials:  # every genome is version 1's construction of the trial's parameters
        v1 = construct(optuna.trial.FixedTrial(t.params), rules, version=1).genome
        assert t.user_attrs["genome"] == v1.to_json()
        v2 = construct(optuna.trial.FixedTrial(t.params), rules, version=2).genome
        rejected_v1_only += "rejected" in t.user_attrs and not check(v2, rules)
    assert rejected_v1_only > 0  # the two constructions differ on this study: resuming with 2 would change it
    # a caller that asks for construction 2 explicitly is refused, naming the difference
    with pytest.raises(SearchError, match=r"construction: 1 -> 2"):
        open_study(storage, "synthetic-nas", settings(**{**begun.__dict__, "construction": 2}), make_pruner("none", 1))


def test_the_search_rejects_what_the_construction_could_not_fit_and_says_why():
    # a MACs cap below any net of the space (a stride-2 stem of 8 channels alone costs 55,296): every proposal is rejected, and the
    # reason adds what the construction tried to the check's violations
    s = settings(max_macs=50_000)
    study = optuna.create_study(direction="maximize")
    open_study(optuna.storages.InMemoryStorage(), "x", s, make_pruner("none", 1))  # the settings are valid
    search = Search(study, s, 10, lambda genome, on_epoch: pytest.fail("nothing may train"), 1, log=lambda _: None,
                    max_skips_in_row=3)
    with pytest.raises(SearchStopped):
        search.run()
    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        genome = Genome.from_json(t.user_attrs["genome"])
        assert t.user_attrs["rejected"] == "; ".join(check(genome, s.rules)) + "; " + construct(
            optuna.trial.FixedTrial(t.params), s.rules).note
        assert "MACs > 50,000" in t.user_attrs["rejected"] and "even at the narrowest widths" in t.user_attrs["rejected"]
