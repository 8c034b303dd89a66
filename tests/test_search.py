"""The search loop through ask/tell with a fake training function: no torch training, fast."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.lifecycle import Outcome, Phase, claim, classify, count, reap_dead_trials
from search.liveness import _start_time, worker_identity
from search.loop import Search, SearchStopped
from search.settings import SearchError
from search.storage import resolve_url
from search.study import SETTINGS_KEY, enqueue_presets, make_pruner, open_study, stored_settings
from search.trials import best_trial, genome_of, leaderboard, rejected_fraction
from space import (PRESETS, Genome, Rules, RulesError, check, check_satisfiable, params_from_genome,
                   random_rejection_rate)
from tests.search_helpers import FakeTrain, memory_study, settings


def quiet(_line: str) -> None:
    pass


def search(study, s, fake, n, **kw) -> Search:
    return Search(study, s, 10, fake, n, log=quiet, **kw)


def test_rejected_candidate_is_not_trained():
    s = settings(max_params=100_000)
    study, fake = memory_study(s), FakeTrain(epochs=3)
    counts = search(study, s, fake, 8).run()
    trials = study.get_trials()
    rejected = [t for t in trials if classify(t) == "rejected"]
    assert rejected, "the space is mostly infeasible at 100k parameters: some candidates must be rejected"
    for t in rejected:
        assert t.user_attrs["genome"] not in fake.calls
        assert t.user_attrs["rejected"] == "; ".join(check(genome_of(t), Rules(100_000, 44)))
        assert {"n_params", "rf", "macs", "summary"} <= t.user_attrs.keys() and t.params
        # told PRUNED with no value (no 0.0 point in Optuna's plots), infeasible for TPE by its constraints
        assert t.state == TrialState.PRUNED and t.values is None and max(t.constraints.values()) > 0
    assert counts.trained == 8 and len(fake.calls) == 8  # rejected ones do not count toward N
    for js in fake.calls:
        assert check(Genome.from_json(js), Rules(100_000, 44)) == []
    assert all(max(t.constraints.values()) <= 0 for t in trials if classify(t) == "completed")


def test_trials_n_means_n_trained_and_resuming_adds_only_the_difference():
    s = settings()
    study, fake = memory_study(s, pruner="median"), FakeTrain(epochs=3)
    assert search(study, s, fake, 6).run().trained == 6
    assert search(study, s, fake, 6).run().trained == 6 and len(fake.calls) == 6  # nothing left to do
    assert search(study, s, fake, 9).run().trained == 9 and len(fake.calls) == 9


def test_pruning_happens_and_pruned_trials_count_as_trained():
    s = settings(trial_epochs=6)
    study, fake = memory_study(s, pruner="median"), FakeTrain(epochs=6)
    counts = search(study, s, fake, 20).run()
    assert counts.pruned > 0 and counts.trained == 20
    pruned = [t for t in study.get_trials() if classify(t) == "pruned"]
    assert all(t.user_attrs["epochs"] < 6 for t in pruned)
    assert counts.epochs < 20 * 6  # pruning saved epochs
    best = best_trial(study.get_trials())
    assert classify(best) == "completed"  # a pruned trial's partial accuracy never wins


def test_presets_are_enqueued_once_per_study_and_trained_exactly():
    s = settings()
    storage = optuna.storages.InMemoryStorage()
    study = memory_study(s, storage=storage)
    fake = FakeTrain()
    search(study, s, fake, 3).run()
    again, created = open_study(storage, "test", s, make_pruner("none", 3))
    assert not created and enqueue_presets(again, 10) == []
    search(again, s, fake, 5).run()
    presets = [t for t in again.get_trials() if "preset" in t.user_attrs]
    assert sorted(t.user_attrs["preset"] for t in presets) == sorted(PRESETS)
    for t in presets:  # the exact preset genome is trained; its params only approximate it for TPE
        assert genome_of(t) == PRESETS[t.user_attrs["preset"]] and t.params
        assert t.user_attrs["genome"] in fake.calls
    assert [t.number for t in presets] == [0, 1, 2]


def test_tpe_learns_to_avoid_the_infeasible_region():
    # The construction fills the budget and raises dilations, so at the default rules almost every candidate
    # is feasible; a receptive field of 200 px is one it cannot give most shapes (about 3 in 4 are rejected
    # when drawn uniformly): TPE must learn which shapes reach it (enough strides early enough).
    s = settings(min_rf=200)
    study = memory_study(s, presets=False)
    search(study, s, FakeTrain(epochs=1), 60).run()
    rejected = rejected_fraction(study.get_trials())
    third = len(rejected) // 3
    first, last = sum(rejected[:third]) / third, sum(rejected[-third:]) / third
    uniform = random_rejection_rate(s.rules, probes=200)
    assert uniform > 0.5 and last < first and last < 0.5 * uniform, (uniform, first, last)


def test_training_failures_are_recorded_and_the_search_goes_on():
    s = settings()
    oom, nan = PRESETS["seed003_net"].to_json(), PRESETS["seed001"].to_json()
    fake = FakeTrain(fail={oom: RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), nan: "diverge"})
    study = memory_study(s)
    assert search(study, s, fake, 4).run().trained == 4
    failed = {t.user_attrs["preset"]: t for t in study.get_trials() if classify(t) == "failed"}
    assert failed["seed003_net"].user_attrs["failed_reason"].startswith("RuntimeError: CUDA out of memory")
    assert "non-finite" in failed["seed001"].user_attrs["failed_reason"]
    assert all(t.state == TrialState.FAIL for t in failed.values())


def test_endless_failures_stop_the_search():
    s = settings()
    fake = FakeTrain(fail={"*": RuntimeError("broken GPU")})
    with pytest.raises(SearchStopped, match="5 candidates in a row failed"):
        search(memory_study(s), s, fake, 3).run()


def test_interrupted_trial_is_failed_requeued_and_finished_on_resume():
    s = settings()
    study = memory_study(s)
    first = FakeTrain(fail={PRESETS["seed003_dilated"].to_json(): KeyboardInterrupt()})
    runner = search(study, s, first, 4)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert runner.interrupted == 1
    t1 = study.get_trials()[1]
    assert t1.state == TrialState.FAIL and t1.user_attrs["failed_reason"] == "interrupted"
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [(t.user_attrs["preset"], t.user_attrs.get("retry_of")) for t in waiting] == [
        ("seed001", None), ("seed003_dilated", 1)]
    assert search(study, s, FakeTrain(), 4).run().trained == 4
    retry = next(t for t in study.get_trials() if t.user_attrs.get("retry_of") == 1)
    assert classify(retry) == "completed" and genome_of(retry) == PRESETS["seed003_dilated"]


@pytest.fixture
def stop_flag():
    from search.workers import STOP
    STOP.clear()
    yield STOP
    STOP.clear()


def test_a_stop_whose_keyboard_interrupt_was_lost_ends_the_trial_at_its_next_epoch(stop_flag):
    # What a signal handler leaves when its KeyboardInterrupt lands in a callback the interpreter only reports
    # (search.workers.STOP): the flag, and training that goes on. The next epoch's check stops the trial.
    s = settings(trial_epochs=3)
    study = memory_study(s)

    class SignalDuringTraining(FakeTrain):
        def __call__(self, genome, on_epoch):
            stop_flag.set()
            return super().__call__(genome, on_epoch)

    fake = SignalDuringTraining(epochs=3)
    runner = search(study, s, fake, 4)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert len(fake.calls) == 1 and fake.finished == []  # stopped after its first epoch, not trained to the end
    t = study.get_trials()[runner.interrupted]
    assert t.state == TrialState.FAIL and t.user_attrs["failed_reason"] == "interrupted"
    assert [u.user_attrs.get("retry_of") for u in study.get_trials() if u.state == TrialState.WAITING][-1] == t.number
    with pytest.raises(KeyboardInterrupt):  # and no new candidate is begun while the flag stands
        search(study, s, FakeTrain(), 4).run()
    assert not [u for u in study.get_trials() if u.state == TrialState.RUNNING]


def test_a_keyboard_interrupt_lost_in_a_callback_is_obeyed_and_not_printed(stop_flag, monkeypatch, capsys):
    import signal
    from search.workers import check_stop, quiet_lost_interrupts, request_stop
    monkeypatch.setattr(sys, "unraisablehook", quiet_lost_interrupts)

    class SignalledInDel:
        def __del__(self):  # the handler runs here, and Python ignores what __del__ raises
            signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        obj = SignalledInDel()
        del obj  # no KeyboardInterrupt gets out of this line
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop_flag.is_set() and capsys.readouterr().err == ""  # nothing printed, not lost either
    with pytest.raises(KeyboardInterrupt):
        check_stop()

    class RaisesInDel:
        def __del__(self):
            raise ValueError("other")

    obj = RaisesInDel()
    del obj
    assert "ValueError: other" in capsys.readouterr().err  # anything else is reported as Python does


def test_a_trial_asked_but_never_signed_is_failed_only_after_the_grace_period(monkeypatch):
    # A worker stopped (or its storage lost) between study.ask() and signing the trial leaves a RUNNING trial
    # that names no worker: a live worker's newest trial looks the same for a moment.
    import time as real_time
    from types import SimpleNamespace
    from search.storage import GRACE_PERIOD
    study = memory_study(settings(), presets=False)
    trial = study.ask()
    assert reap_dead_trials(study) == [] and study.get_trials()[0].state == TrialState.RUNNING
    later = real_time.time() + GRACE_PERIOD + 1
    monkeypatch.setattr("search.lifecycle.time", SimpleNamespace(time=lambda: later, monotonic=real_time.monotonic,
                                                                 sleep=real_time.sleep))
    assert reap_dead_trials(study) == [trial.number]
    t = study.get_trials()[0]
    assert t.state == TrialState.FAIL and "worker vanished before the trial started" in t.user_attrs["failed_reason"]


def test_running_trial_of_a_dead_process_is_failed_and_requeued():
    s = settings()
    study = memory_study(s, presets=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    genome = PRESETS["seed001"]
    trial.set_user_attr("worker", {**worker_identity(), "pid": dead.pid, "start": "1"})
    trial.set_user_attr("genome", genome.to_json())
    trial.set_user_attr("phase", "training")
    assert reap_dead_trials(study) == [trial.number]
    t = study.get_trials()[trial.number]
    assert t.state == TrialState.FAIL and "died" in t.user_attrs["failed_reason"]
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert len(retry) == 1 and retry[0].user_attrs["genome"] == genome.to_json()
    assert reap_dead_trials(study) == []  # idempotent


def test_a_live_siblings_running_trial_survives_a_reap_and_a_dead_ones_is_failed_and_requeued():
    # Two sibling workers on this machine (--jobs 2), each in the middle of training a candidate, and a reap
    # by a third worker: the live sibling's trial is left RUNNING, the dead one's is failed and queued again.
    study = memory_study(settings(), presets=False)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    try:
        trials = {}
        for name, proc, genome in (("live", live_proc, "seed001"), ("dead", dead_proc, "seed003_net")):
            trial = study.ask()
            trial.set_user_attr("worker", {**worker_identity(), "pid": proc.pid, "start": _start_time(proc.pid)})
            trial.set_user_attr("genome", PRESETS[genome].to_json())
            trial.set_user_attr("phase", "training")
            trials[name] = trial.number
        assert reap_dead_trials(study) == [trials["dead"]]
        after = {t.number: t for t in study.get_trials()}
        assert after[trials["live"]].state == TrialState.RUNNING
        assert "failed_reason" not in after[trials["live"]].user_attrs
        assert after[trials["dead"]].state == TrialState.FAIL
        assert f"worker pid {dead_proc.pid} died" in after[trials["dead"]].user_attrs["failed_reason"]
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert [(t.user_attrs["genome"], t.user_attrs["retry_of"]) for t in waiting] == [
            (PRESETS["seed003_net"].to_json(), trials["dead"])]
        assert reap_dead_trials(study) == []  # the live one still survives a second reap
    finally:
        live_proc.kill()
        live_proc.wait()


def test_this_processs_own_running_trial_is_an_orphan_between_steps():
    study = memory_study(settings(), presets=False)
    trial = study.ask()  # left RUNNING by an interrupted step of this very process
    trial.set_user_attr("worker", worker_identity())
    assert reap_dead_trials(study) == [trial.number]


def test_a_genome_trained_before_is_not_trained_again():
    s = settings()
    study, fake, g = memory_study(s, presets=False), FakeTrain(), PRESETS["seed003_net"]
    for _ in range(2):
        study.enqueue_trial(params_from_genome(g), user_attrs={"genome": g.to_json()})
    search(study, s, fake, 2).run()
    dup = [t for t in study.get_trials() if classify(t) == "duplicate"]
    assert len(dup) == 1 and dup[0].user_attrs["duplicate_of"] == 0 and dup[0].value == study.get_trials()[0].value
    assert len(fake.calls) == len(set(fake.calls)) == 2


def test_best_trial_breaks_ties_by_fewer_parameters():
    s = settings()
    study = memory_study(s, presets=False)
    for name in ("seed003_dilated", "seed003_net", "seed001"):
        g = PRESETS[name]
        study.enqueue_trial({}, user_attrs={"genome": g.to_json()})

    def same(genome, on_epoch):
        from tests.search_helpers import FakeResult, Stats
        on_epoch(Stats(1, 0.5))
        return FakeResult("completed", [Stats(1, 0.5)])

    search(study, s, same, 3).run()
    assert genome_of(best_trial(study.get_trials())) == PRESETS["seed003_net"]  # 84k < 155k < 198k
    board = leaderboard(study)
    assert board.iloc[0]["rank"] == 1 and board.iloc[0]["params"] == 84_322 and bool(board.iloc[0]["best"])


def test_settings_of_an_existing_study_are_enforced():
    storage = optuna.storages.InMemoryStorage()
    open_study(storage, "s", settings(), make_pruner("none", 3))
    with pytest.raises(SearchError, match=r"other settings \(seed: 0 -> 1\).*--study-name"):
        open_study(storage, "s", settings(seed=1), make_pruner("none", 3))
    open_study(storage, "s", settings(), make_pruner("median", 3))  # the pruner may change


def test_a_study_of_an_older_search_space_is_not_resumed():
    storage = optuna.storages.InMemoryStorage()
    study, _ = open_study(storage, "s", settings(), make_pruner("none", 3))
    old = {k: v for k, v in settings().to_dict().items() if k not in ("space", "schema")}  # as stored before the version field
    study.set_user_attr(SETTINGS_KEY, old)
    assert stored_settings(study).space == 1
    with pytest.raises(SearchError, match=r"search space version 1, this version samples 2, 3.*--study-name NEW"):
        open_study(storage, "s", settings(), make_pruner("none", 3))


def test_unsatisfiable_constraints_are_found_before_training():
    check_satisfiable(Rules(200_000, 44))
    check_satisfiable(Rules(30_000, 44))  # tight but possible: narrow nets
    check_satisfiable(Rules(2_000, 44))  # possible: widths of 8, one DSC layer per block
    with pytest.raises(RulesError, match="no genome of the search space"):
        check_satisfiable(Rules(500, 44))
    with pytest.raises(RulesError, match="none reaches RF 5000"):
        check_satisfiable(Rules(200_000, 5000))


@pytest.mark.parametrize("spec, url", [
    (None, "sqlite:///results/x.db"), ("runs/a.db", "sqlite:///runs/a.db"), ("a.log", "journal:a.log"),
    ("journal:/n/a", "journal:/n/a"), ("postgresql://u:p@h/db", "postgresql://u:p@h/db"),
    ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db")])
def test_storage_specs(spec, url):
    assert resolve_url(spec, "x") == url


@pytest.mark.parametrize("spec", ["foo://bar", "results/thing", "http://host/db"])
def test_bad_storage_specs(spec):
    with pytest.raises(SearchError):
        resolve_url(spec, "x")


def test_counts_and_kinds_cover_every_trial():
    s = settings(max_params=100_000, trial_epochs=4)
    study = memory_study(s, pruner="median")
    search(study, s, FakeTrain(epochs=4), 10).run()
    trials = study.get_trials()
    c = count(trials)
    assert c.completed + c.pruned + c.rejected + c.duplicate + c.failed == len(trials)
    assert len(leaderboard(study)) == len(trials)
    assert dataclasses.asdict(c)["completed"] == c.completed


def test_journal_storage_runs_the_search_and_reaps_silent_workers(tmp_path):
    from search.storage import open_storage

    s = settings()
    storage = open_storage(f"journal:{tmp_path / 'study.log'}")
    study = memory_study(s, storage=storage)
    assert search(study, s, FakeTrain(), 3).run().trained == 3
    trial = study.ask()  # a worker on another machine that stopped beating long ago
    trial.set_user_attr("worker", {"host": "elsewhere", "boot": "x", "pid": 1, "start": "1"})
    trial.set_user_attr("heartbeat_at", 0.0)
    trial.set_user_attr("phase", "training")
    fresh = study.ask()  # ... and one that is alive
    fresh.set_user_attr("worker", {"host": "elsewhere", "boot": "x", "pid": 2, "start": "1"})
    fresh.set_user_attr("heartbeat_at", __import__("time").time())
    assert reap_dead_trials(study) == [trial.number]
    assert "no heartbeat" in study.get_trials()[trial.number].user_attrs["failed_reason"]


def test_a_candidate_is_not_trained_when_other_workers_hold_the_last_places_and_a_preset_is_kept(monkeypatch):
    s = settings()
    study, fake = memory_study(s), FakeTrain()
    runner = search(study, s, fake, 1, claim_wait_seconds=0.0)
    # Another worker (on another node: no shared lock) pops the first preset and claims the only place of
    # --trials 1 right after ours saw one free; ours then pops the next preset and finds the place taken.
    other = study.ask()
    other.set_user_attr("phase", "training")
    monkeypatch.setattr("search.loop.free_places", lambda study, n: True)
    assert runner.step() == Outcome.NO_PLACE and fake.calls == []
    trials = study.get_trials()
    skipped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(skipped) == 1 and skipped[0].user_attrs["failed_reason"].startswith("not trained: the study already")
    # The preset it had popped is queued again, as it was, for a later run with a larger --trials.
    waiting = [t.user_attrs.get("preset") for t in trials if t.state == TrialState.WAITING]
    assert skipped[0].user_attrs["preset"] in waiting and "retries" not in skipped[0].user_attrs
    assert other.number != skipped[0].number and study.get_trials()[other.number].state == TrialState.RUNNING


def test_a_later_candidate_waits_for_an_earlier_one_still_being_checked():
    s = settings()
    study = memory_study(s, presets=False)
    earlier, later = study.ask(), study.ask()  # two workers; neither has decided to train yet
    t0 = time.monotonic()
    assert claim(study, later, 1, Phase.TRAINING, 0.3) is True  # waited for the earlier verdict, then went ahead
    assert time.monotonic() - t0 >= 0.3
    assert later.user_attrs["phase"] == "training" and count(study.get_trials()).running == 1
    # Another pair: the earlier takes the only place at once, and the later one then finds it taken.
    study = memory_study(s, presets=False)
    earlier, later = study.ask(), study.ask()
    t0 = time.monotonic()
    assert claim(study, earlier, 1, Phase.TRAINING, 5.0) is True  # nothing before it
    assert time.monotonic() - t0 < 2.0
    assert claim(study, later, 1, Phase.TRAINING, 5.0) is False
    assert "phase" not in study.get_trials()[later.number].user_attrs


def test_an_interrupted_final_retrain_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import search.final as final
    import search.seedrun as seedrun
    from train.data import make_synthetic
    from tests.search_helpers import final_run

    s = settings(max_params=100_000)
    study = memory_study(s)
    search(study, s, FakeTrain(epochs=3), 1).run()  # one trained trial: seed003_net
    data = make_synthetic(64, 32)
    run = final_run(study, s, data, tmp_path, 3)
    real_train = seedrun.train
    checkpoints = []

    def crash_after_epoch_2(genome, config, data, on_epoch=None):
        def stop(stats):
            if stats.epoch == 2:  # the checkpoint of epoch 2 is on disk by now
                checkpoints.append(config.checkpoint)
                raise KeyboardInterrupt
        return real_train(genome, config, data, on_epoch=stop)

    monkeypatch.setattr(seedrun, "train", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        final.retrain_best(run)
    import torch
    first_two = torch.load(checkpoints[0], weights_only=True)["history"]
    assert [h["epoch"] for h in first_two] == [1, 2]
    assert Path(checkpoints[0]).parent == tmp_path / seedrun.RUNS_DIR  # the one retrain cache

    epochs_trained = []
    monkeypatch.setattr(seedrun, "train", lambda g, c, d: real_train(g, c, d, on_epoch=lambda st: epochs_trained.append(st.epoch)))
    record = final.retrain_best(run)
    assert epochs_trained == [3]  # epochs 1 and 2 came from the checkpoint
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert [h["seconds"] for h in record["history"][:2]] == [h["seconds"] for h in first_two]
    assert not Path(checkpoints[0]).exists()  # a finished run keeps its weights and record, not its checkpoint
    # the test accuracy is that of the weights it wrote, on the test images
    from space import build
    from train.engine import evaluate
    net = build(Genome.from_json(record["genome"]))
    net.load_state_dict(torch.load(tmp_path / "best_model.pt", weights_only=True))
    assert evaluate(net, data.x_test, data.y_test, data.mean, data.std)[1] == pytest.approx(record["test_acc"], abs=1e-6)
    # flip-TTA only where training flips the images (issue 37); these settings do not
    assert not s.augment and record["test_acc_tta"] is None


def test_tpe_learns_from_rejected_candidates_though_they_are_told_pruned_with_no_value():
    # Optuna's TPE sorts a trial with constraints > 0 into its infeasible group whatever its state (issue 46):
    # what keeps the rules' region learned now that a rejected candidate shows no 0.0 in the plots.
    from optuna.samplers._tpe.sampler import _split_trials

    s = settings(max_params=100_000)
    study = memory_study(s)
    search(study, s, FakeTrain(epochs=3), 6).run()
    trials = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    rejected = {t.number for t in trials if classify(t) == "rejected"}
    assert rejected
    below, above = _split_trials(study, trials, n_below=3)
    assert not rejected & {t.number for t in below} and rejected <= {t.number for t in above}
