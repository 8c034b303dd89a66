"""--finalists K (issue 43): the K best trials re-ranked at the final fidelity on the validation images, the
best of them the winner; stored with the study and resumable without training a finalist twice."""
from __future__ import annotations

import json

import optuna
import pytest

import search.seedrun as seedrun
from search import run as run_cmd
from search.loop import Search
from search.trials import FINALISTS_KEY, best_trial, finalists_winner, pick_trial, ranked_trials
from tests.search_helpers import FakeTrain, call, memory_study, settings

# digits, 6 trained trials: seconds each on a CPU; 3 finalists, then the winner from 2 seeds, no baselines
DIGITS = ["--dataset", "digits", "--trials", "6", "--finalists", "3", "--final-seeds", "2", "--max-macs", "3000000",
          "--trial-epochs", "2", "--final-epochs", "2", "--compare", "none", "--quiet"]


def test_the_winner_is_the_best_reranked_finalist_and_a_kill_during_the_reranking_retrains_none_twice(
        tmp_path, capsys, monkeypatch):
    argv = [*DIGITS, "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out")]
    real, trained = seedrun.train, []

    def killed_in_the_second_finalist(genome, config, data, on_epoch=None):
        trained.append((genome.to_json(), config.seed, len(data.y_train)))
        if len(trained) == 2:  # Ctrl-C after the second finalist's first epoch (its checkpoint is on disk)
            def stop(stats):
                raise KeyboardInterrupt
            return real(genome, config, data, on_epoch=stop)
        return real(genome, config, data, on_epoch=on_epoch)

    monkeypatch.setattr(seedrun, "train", killed_in_the_second_finalist)
    code, _, err = call(run_cmd.main, argv, capsys)
    assert code == 130 and "interrupted during the final retrain" in err
    first_two = list(trained)
    epochs_run = []

    def counted(genome, config, data, on_epoch=None):
        trained.append((genome.to_json(), config.seed, len(data.y_train)))
        return real(genome, config, data, on_epoch=lambda stats: epochs_run.append((len(trained), stats.epoch)))

    monkeypatch.setattr(seedrun, "train", counted)
    code, out, err = call(run_cmd.main, argv, capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="digits-nas", storage=f"sqlite:///{tmp_path / 's.db'}")
    stored = study.user_attrs[FINALISTS_KEY]
    top = ranked_trials(study.get_trials())[:3]
    assert [r["trial"] for r in stored["rows"]] == [t.number for t in top]  # the 3 best by validation
    assert [r["trial_val_acc"] for r in stored["rows"]] == [t.values[0] for t in top]
    best = max(stored["rows"], key=lambda r: (r["val_acc"], -r["rank"]))
    assert stored["winner"] == best["trial"] and finalists_winner(study) == best["trial"]
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    assert final["trial"] == best["trial"] and final["finalists"] == stored
    assert pick_trial(study).number == best["trial"]  # export and report use the same winner
    # Nothing trained twice: the first finalist was read back, the second resumed after its first epoch,
    # the third trained once; then the winner's two seeds on all training images.
    finalists = [t for t in trained if t[2] < 1347]  # the search split's training images, not all 1,347
    assert len(finalists) == 4 and finalists[:2] == first_two and len(set(finalists)) == 3
    assert [e for n, e in epochs_run if n == 3] == [2]  # the resumed finalist: only its second epoch
    assert [t[1:] for t in trained if t[2] == 1347] == [(0, 1347), (1, 1347)]
    # the report names the finalists with both accuracies
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### Finalists re-ranked" in report
    for r in stored["rows"]:
        assert f"| {r['rank']} | {r['trial']} | {r['trial_val_acc']:.4f} | {r['val_acc']:.4f} |" in report
    assert f"winner: trial {best['trial']}" in out


def test_ranked_trials_is_the_order_best_trial_picks_from_and_a_stale_reranking_is_ignored():
    s = settings(max_params=100_000)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=3), 5, log=lambda _: None).run()
    ranked = ranked_trials(study.get_trials())
    assert ranked and ranked[0] == best_trial(study.get_trials())
    assert [t.values[0] for t in ranked] == sorted((t.values[0] for t in ranked), reverse=True)
    last = ranked[-1].number
    study.set_user_attr(FINALISTS_KEY, {"k": len(ranked), "winner": last,
                                        "rows": [{"trial": t.number} for t in ranked]})
    assert finalists_winner(study) == last and pick_trial(study).number == last
    # A re-ranking of other trials than today's best (more trials trained since) is stale: ignored.
    study.set_user_attr(FINALISTS_KEY, {"k": len(ranked), "winner": last,
                                        "rows": [{"trial": t.number} for t in reversed(ranked)]})
    assert finalists_winner(study) is None and pick_trial(study).number == ranked[0].number


@pytest.mark.parametrize("k", ["0", "51"])
def test_finalists_out_of_range_is_one_error_line_before_anything_is_written(tmp_path, capsys, k):
    code, _, err = call(run_cmd.main, [*DIGITS[:4], "--finalists", k, "--storage", f"sqlite:///{tmp_path / 's.db'}"],
                        capsys)
    assert code == 2 and err.startswith("error: --finalists") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()
