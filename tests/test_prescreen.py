"""--prescreen K through the search loop (ask/tell, fake training, fake or real proxies): each trained trial is
the best of K feasible proposals, the others are recorded as screened out and never trained or counted; presets
skip it; a killed or interrupted round resumes to exactly N; several workers count exactly."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from search.lifecycle import classify, count
from search.liveness import worker_identity
from search.prescreen import Prescreen, best_first, make_prescreen, parse_prescreen, scores_of
from search.report import write_report
from search.loop import Search
from search.settings import SearchError, SearchSettings, resolve_settings
from search.study import make_pruner, open_study
from search.trials import best_trial, leaderboard
from space import PRESETS, analyze
from tests.search_helpers import FakeTrain, memory_study, run_threads, settings


def quiet(_line: str) -> None:
    pass


class FakeScore:
    """Stands in for the real proxies: `params` = the genome's parameters; the VOTE proxies from a hash."""

    def __init__(self, value=None):
        self.value = value  # genome -> float for every proxy (default: the above)
        self.calls: list[list[str]] = []  # the genome JSON of every round scored

    def __call__(self, genomes):
        self.calls.append([g.to_json() for g in genomes])
        out = []
        for g in genomes:
            h = int(hashlib.sha256(g.to_json().encode()).hexdigest()[:8], 16)
            row = {"params": float(analyze(g).params), "synflow": float(h % 997), "naswot": float(h % 991),
                   "grad_norm": float(h % 983)}
            if self.value is not None:
                row = {k: self.value(g) for k in row}
            out.append(row)
        return out


def search(study, s, fake, n, score=None, proxy="params", k=3, **kw) -> Search:
    return Search(study, s, 10, fake, n, log=quiet, prescreen=Prescreen(k, proxy, score or FakeScore()), **kw)


def rounds(trials) -> dict[int, list]:
    """Winner number -> the screened trials of its round."""
    out: dict[int, list] = {}
    for t in trials:
        if classify(t) == "screened":
            out.setdefault(t.user_attrs["prescreen_lost_to"], []).append(t)
    return out


def test_each_trained_trial_is_the_best_of_k_proposals_and_the_others_are_never_trained():
    s = settings(max_params=100_000, prescreen=3, proxy="params")  # some proposals are rejected at 100k
    study, fake, score = memory_study(s, presets=False), FakeTrain(), FakeScore()
    counts = search(study, s, fake, 12, score).run()  # past TPE's 10 startup trials: the model proposes too
    trials = study.get_trials()
    assert counts.trained == 12 and len(fake.calls) == 12  # the K - 1 losers do not count and are not trained
    by_winner = rounds(trials)
    assert counts.screened == sum(map(len, by_winner.values())) == 12 * 2
    assert all(len(r) == 3 for r in score.calls)
    for t in trials:
        if classify(t) == "screened":
            assert t.state == TrialState.FAIL and t.user_attrs["genome"] not in fake.calls
        if classify(t) == "rejected":  # recorded as without a prescreen, never scored
            assert "prescreen_rank" not in t.user_attrs and all(t.user_attrs["genome"] not in r for r in score.calls)
    for t in trials:
        if classify(t) not in ("completed", "pruned"):
            continue
        a = t.user_attrs
        assert a["prescreen_rank"] == 1 and a["prescreen_k"] == 3 and a["prescreen_proxy"] == "params"
        assert a["prescreen_score"] == a["n_params"] == a["prescreen_values"]["params"]
        losers = by_winner[t.number]
        assert sorted(u.user_attrs["prescreen_rank"] for u in losers) == [2, 3]
        assert all(u.user_attrs["n_params"] <= a["n_params"] for u in losers)  # the best by the proxy won
    board = leaderboard(study)
    trained = board[board.state.isin(["completed", "pruned"])]
    assert (trained.proxy_rank == 1).all() and trained.proxy_score.notna().all() and trained.lost_to.isna().all()
    screened = board[board.state == "screened"]
    assert len(screened) == 24 and (screened.proxy_rank >= 2).all() and screened.lost_to.notna().all()
    assert board[board.state == "rejected"].proxy_score.isna().all()


def test_enqueued_presets_and_retries_are_trained_without_a_prescreen():
    s = settings(prescreen=3, proxy="params")
    study, fake, score = memory_study(s), FakeTrain(), FakeScore()
    search(study, s, fake, 3, score).run()
    assert score.calls == [] and count(study.get_trials()).screened == 0
    assert sorted(t.user_attrs["preset"] for t in study.get_trials() if classify(t) == "completed") == sorted(PRESETS)
    search(study, s, fake, 4, score).run()  # the fourth is the sampler's: screened
    assert len(score.calls) == 1 and count(study.get_trials()).screened == 2


def test_a_round_whose_scores_are_all_broken_trains_its_first_proposal():
    s = settings(prescreen=3, proxy="vote")
    study, fake = memory_study(s, presets=False), FakeTrain()
    search(study, s, fake, 3, FakeScore(lambda g: float("nan")), proxy="vote").run()
    trials = study.get_trials()
    assert count(trials).trained == 3
    for winner, losers in rounds(trials).items():
        assert winner < min(u.number for u in losers)  # every proposal tied last: the earliest one is trained
        assert all(u.user_attrs["prescreen_values"]["synflow"] is None for u in losers)  # NaN stored as null


def test_one_broken_proxy_value_ranks_last_but_keeps_its_candidate():
    # Vote over three proxies; candidate 1's naswot is -inf but it leads the other two: it still wins.
    values = [{"synflow": 1.0, "naswot": 5.0, "grad_norm": 1.0},
              {"synflow": 9.0, "naswot": -math.inf, "grad_norm": 9.0},
              {"synflow": 2.0, "naswot": 4.0, "grad_norm": 2.0}]
    scores = scores_of(values, "vote")
    assert best_first(scores) == [1, 2, 0]
    assert best_first(scores_of(values, "naswot")) == [0, 2, 1]  # alone it is last, never dropped
    assert best_first([math.nan, math.nan]) == [0, 1]


def test_multi_objective_studies_prescreen_too():
    s = settings(objectives="accuracy,params", prescreen=2, proxy="synflow")
    study, fake = memory_study(s, presets=False), FakeTrain()
    counts = search(study, s, fake, 4, k=2, proxy="synflow").run()
    trials = study.get_trials()
    assert counts.trained == 4 and counts.screened == 4
    assert all(t.state == TrialState.FAIL and t.values is None for t in trials if classify(t) == "screened")
    assert classify(best_trial(trials)) == "completed" and len(leaderboard(study)) == len(trials)


def test_an_interrupted_round_leaves_nothing_running_and_resumes_to_exactly_n():
    s = settings(prescreen=3, proxy="params")
    study = memory_study(s, presets=False)
    search(study, s, FakeTrain(), 2).run()

    def interrupted(genomes):
        raise KeyboardInterrupt

    runner = search(study, s, FakeTrain(), 4, FakeScore())
    runner.prescreen = Prescreen(3, "params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    trials = study.get_trials()
    stopped = [t for t in trials if t.user_attrs.get("failed_reason") == "interrupted"]
    assert len(stopped) == 3 and runner.interrupted == stopped[0].number
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]  # not queued: untrained
    fake = FakeTrain()
    assert search(study, s, fake, 4).run().trained == 4 and len(fake.calls) == 2


def test_a_killed_round_is_reaped_and_the_resume_trains_exactly_n():
    s = settings(prescreen=3, proxy="params")
    study = memory_study(s, presets=False)
    search(study, s, FakeTrain(), 2).run()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    g = PRESETS["seed003_net"].to_json()
    for phase in ("reserved", "screening", "screening", "training"):  # a worker killed mid-round; one in training
        t = study.ask()
        t.set_user_attr("worker", {**worker_identity(), "pid": dead.pid, "start": "1"})
        t.set_user_attr("genome", g)
        t.set_user_attr("phase", phase)
    fake = FakeTrain()
    assert search(study, s, fake, 4).run().trained == 4
    trials = study.get_trials()
    died = [t for t in trials if "died" in t.user_attrs.get("failed_reason", "")]
    assert len(died) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert [r.user_attrs["retry_of"] for r in retries] == [died[-1].number]  # only the one in training
    assert len(fake.calls) == 2 and fake.calls[0] == g  # the retry first, without a round, then one more


def test_workers_sharing_the_slot_lock_train_exactly_n_with_a_prescreen(monkeypatch):
    monkeypatch.setattr("search.loop.reap_dead_trials", lambda study: [])  # threads of one process: see test_jobs
    s = settings(prescreen=3, proxy="params")
    study, fake, lock = memory_study(s), FakeTrain(epochs=2), threading.Lock()
    workers = [search(study, s, fake, 7, FakeScore(), poll_seconds=0.01, lock=lock) for _ in range(3)]
    run_threads(workers)
    trials = study.get_trials()
    assert count(trials).trained == 7 and len(fake.calls) == 7
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(classify(t) in ("completed", "pruned", "screened", "rejected", "duplicate", "failed") for t in trials)


def test_the_real_proxies_score_and_choose_on_the_search_data():
    from train.data import make_synthetic, train_val_split

    s = settings(prescreen=2, proxy="vote")
    data = train_val_split(make_synthetic(96, 32), s.val_size, seed=s.seed)
    prescreen = make_prescreen(data, s, "cpu")
    assert prescreen.k == 2 and make_prescreen(data, settings(), "cpu") is None
    genomes = [PRESETS["seed003_net"], PRESETS["seed001"]]
    values = prescreen.score(genomes)
    assert [sorted(v) for v in values] == [["grad_norm", "naswot", "synflow"]] * 2
    assert all(math.isfinite(x) for v in values for x in v.values())
    assert prescreen.score(genomes) == values  # deterministic: the same batch, seed and weights
    study, fake = memory_study(s, presets=False), FakeTrain()
    Search(study, s, 10, fake, 1, log=quiet, prescreen=prescreen).run()
    assert count(study.get_trials()).screened == 1 and len(fake.calls) == 1


def test_prescreen_settings_are_validated_and_kept_with_the_study():
    assert parse_prescreen(1, None) == (1, "grad_norm") and parse_prescreen(4, "synflow") == (4, "synflow")
    with pytest.raises(SearchError, match="--prescreen must be a positive integer"):
        parse_prescreen(0, None)
    with pytest.raises(SearchError, match="unknown --proxy 'snip'; choose one of: vote, synflow"):
        parse_prescreen(3, "snip")
    with pytest.raises(SearchError, match="--proxy naswot needs --prescreen K with K >= 2"):
        parse_prescreen(1, "naswot")
    storage = optuna.storages.InMemoryStorage()
    open_study(storage, "s", settings(prescreen=3), make_pruner("none", 3))
    with pytest.raises(SearchError, match=r"prescreen: 3 -> 1"):
        open_study(storage, "s", settings(), make_pruner("none", 3))


def test_the_report_shows_the_screened_proposals_and_the_proxy_columns(tmp_path):
    s = settings(prescreen=2, proxy="params")
    study = memory_study(s, presets=False)
    search(study, s, FakeTrain(), 3, k=2).run()
    paths = write_report(study, tmp_path, "memory")
    header = paths["leaderboard"].read_text().splitlines()[0].split(",")
    assert {"proxy_score", "proxy_rank", "lost_to"} <= set(header)
    md = paths["report"].read_text()
    assert "screened out (never trained)" in md and "best of 2 feasible proposals by params" in md
    assert "proxy_score | proxy_rank" in md  # in the top-10 table


def test_a_prescreen_without_proxy_ranks_by_grad_norm_however_the_settings_are_made():
    """--prescreen K without --proxy: the flags (search.run), a new study's resolved settings, and the stored
    settings of a study from before the prescreen existed all give grad_norm (it ranked trained nets best)."""
    assert parse_prescreen(3, None) == (3, "grad_norm")
    assert resolve_settings({"dataset": "synthetic", "prescreen": 3})[0].proxy == "grad_norm"
    old = {k: v for k, v in settings().to_dict().items() if k not in ("schema", "prescreen", "proxy", "sampler")}
    stored = SearchSettings.from_dict(old)
    assert (stored.prescreen, stored.proxy) == (1, "grad_norm")
