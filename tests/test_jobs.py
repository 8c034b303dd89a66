"""Several trials at once: --jobs N workers on one study count exactly, stop on Ctrl-C and resume; where the
study lives; the reservation that keeps concurrent workers from over-training; the bench's JSON."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.lifecycle import classify
from search.loop import Search
from search.storage import default_journal, migrate_to_journal, open_storage, resolve_url
from search.study import stored_settings
from search.workers import SlotLock, worker_argv
from tests.search_helpers import FakeTrain, memory_study, oom_env, run_main, run_threads, settings

# digits, tiny: 200 training images (160 train / 40 validation), 1 epoch of 5 steps per trial; at most 100k
# parameters, so that the slowest preset (seed003_dilated: full resolution throughout) is rejected.
DIGITS = ["--dataset", "digits", "--subset-train", "200", "--subset-test", "50", "--trial-epochs", "1",
          "--batch-size", "32", "--max-params", "100000", "--no-final"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}


def cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def journal_study(cwd: Path, name: str) -> optuna.Study:
    url = f"journal:{cwd / 'results' / f'{name}.journal'}"
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def trained(trials) -> list:
    return [t for t in trials if classify(t) in ("completed", "pruned")]


def overlapping(trials) -> bool:
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_jobs_2_trains_exactly_n_trials_at_once_and_every_command_finds_the_study(tmp_path):
    # The one real --jobs run of the suite (each costs tens of seconds on 2 cores), so it carries every
    # behaviour that needs real workers: the exact count, both at once, the prescreen's rounds (--proxy params:
    # no forward pass) and out-of-memory in a worker (OOM_HOOK: one candidate never fits, one fits alone).
    env, marks = oom_env(tmp_path)
    r = subprocess.run([sys.executable, "-m", "search.run", *DIGITS, "--trials", "6", "--jobs", "2", "--prescreen",
                        "3", "--proxy", "params", "--study-name", "jobs", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "results/jobs.journal" in r.stdout and "optuna-dashboard results/jobs.journal" in r.stdout
    assert "[w0]" in r.stdout and "[w1]" in r.stdout  # both workers trained
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["trained"] == 6 and summary["too_large"] == 1 and summary["screened"] > 0
    assert not (tmp_path / "results" / "jobs.db").exists()
    trials = journal_study(tmp_path, "jobs").get_trials()
    assert len(trained(trials)) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert overlapping(trained(trials))  # two trials were training at the same time
    # Neither worker reaped the other's live trial: the only failed trial a healthy run may hold is a candidate
    # that found no place left ("not trained"; screened-out proposals are FAIL too, with their own verdict),
    # and both workers exited cleanly.
    failed = [t.user_attrs.get("failed_reason", "") for t in trials if classify(t) == "failed"]
    assert all(reason.startswith("not trained") for reason in failed), failed
    assert "died" not in r.stdout and "no heartbeat" not in r.stdout and "Traceback" not in r.stderr
    # Out of memory: the candidate that fitted alone was trained, the one that never fits is "too large".
    by_genome = {t.user_attrs.get("genome"): t for t in trials if classify(t) not in ("duplicate", "screened")}
    retried = by_genome[(marks / "once").read_text()]
    assert classify(retried) in ("completed", "pruned")
    assert "trained alone on its device (shared by 2 workers)" in retried.user_attrs["oom_retry"]
    never = by_genome[(marks / "never_fits").read_text()]
    assert classify(never) == "too large" and never.constraints["memory"] == 1.0
    assert "CUDNN_STATUS_ALLOC_FAILED" in never.user_attrs["too_large"]
    assert "too large for this device" in r.stdout and "retried" in r.stdout
    # The prescreen: best of 3 by parameters, each screened-out proposal lost to a larger trained one.
    assert "best of 3 by params" in r.stdout
    screened = [t for t in trials if classify(t) == "screened"]
    assert screened
    for t in screened:
        winner = next(u for u in trials if u.number == t.user_attrs["prescreen_lost_to"])
        assert classify(winner) in ("completed", "pruned", "too large")
        assert t.user_attrs["n_params"] <= winner.user_attrs["n_params"]
    # Without --storage, the other commands look for the journal first.
    r = cli(tmp_path, "search.export", "--study-name", "jobs", "-o", "best.py")
    assert r.returncode == 0, r.stderr
    assert "class Net(nn.Module)" in (tmp_path / "best.py").read_text()


def _wait_for_two_training(cwd: Path, name: str, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = journal_study(cwd, name).get_trials(deepcopy=False)
        except Exception:  # the journal is not written yet
            trials = []
        if sum(t.state == TrialState.RUNNING and t.user_attrs.get("phase") == "training" for t in trials) == 2:
            return
        time.sleep(0.1)
    raise AssertionError("the two workers never trained at the same time")


def test_ctrl_c_stops_every_worker_and_the_same_command_resumes_to_exactly_n(tmp_path):
    # 3 epochs per trial: both workers must still be training when Ctrl-C arrives.
    args = [("3" if prev == "--trial-epochs" else a) for prev, a in zip([None, *DIGITS], DIGITS)]
    cmd = [sys.executable, "-m", "search.run", *args, "--trials", "3", "--jobs", "2", "--study-name", "cc"]
    # A new session: the signal goes to the whole process group, as a terminal's Ctrl-C does.
    p = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    _wait_for_two_training(tmp_path, "cc", p)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert p.returncode == 130 and len(lines) == 1, err
    assert lines[0].startswith("interrupted: trial") and "run the same command to resume" in lines[0]
    trials = journal_study(tmp_path, "cc").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # every worker cleaned up
    stopped = [t for t in trials if t.user_attrs.get("failed_reason") == "interrupted"]
    assert stopped and all(str(t.number) in lines[0] for t in stopped)  # one or both were mid-trial
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trials = journal_study(tmp_path, "cc").get_trials()
    assert len(trained(trials)) == 3 and not [t for t in trials if t.state == TrialState.RUNNING]
    for t in stopped:  # the interrupted candidates were queued again
        assert any(u.user_attrs.get("retry_of") == t.number for u in trials)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by its new parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_die_with_a_parent_killed_by_sigkill_and_the_same_command_resumes_to_exactly_n(tmp_path):
    args = [("3" if prev == "--trial-epochs" else a) for prev, a in zip([None, *DIGITS], DIGITS)]
    cmd = [sys.executable, "-m", "search.run", *args, "--trials", "3", "--jobs", "2", "--study-name", "k9"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    _wait_for_two_training(tmp_path, "k9", p)
    workers = _children(p.pid)
    assert len(workers) == 2
    p.kill()  # SIGKILL: the parent passes nothing on
    p.wait()
    end = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < end:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]  # every worker gone within 10 s
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trials = journal_study(tmp_path, "k9").get_trials()
    assert len(trained(trials)) == 3 and not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failed_reason")]
    assert len(stopped) >= 2  # the two trials in training when the parent died
    for t in stopped:  # each failed with its reason and its candidate queued again
        assert any(u.user_attrs.get("retry_of") == t.number for u in trials), t.user_attrs["failed_reason"]


def test_workers_sharing_the_slot_lock_never_train_more_than_n(monkeypatch):
    # Threads of one process stand in for worker processes; the reaper would take each other's trials for
    # orphans of this process (it is tested on its own in test_search), so it is off here.
    monkeypatch.setattr("search.loop.reap_dead_trials", lambda study: [])
    s = settings(trial_epochs=2)
    study = memory_study(s)

    class SlowTrain(FakeTrain):
        def __call__(self, genome, on_epoch):
            time.sleep(0.02)  # long enough for the other workers to look at the count meanwhile
            return super().__call__(genome, on_epoch)

    lock, fake = threading.Lock(), SlowTrain(epochs=2)
    workers = [Search(study, s, 10, fake, 7, log=lambda _: None, poll_seconds=0.01, lock=lock) for _ in range(4)]
    run_threads(workers)
    trials = study.get_trials()
    assert len(trained(trials)) == 7 and len(fake.calls) == 7  # not one training run more
    assert overlapping(trained(trials))


def test_slot_lock_is_exclusive_across_processes(tmp_path):
    code = ("import sys, time; from search.workers import SlotLock\n"
            "with SlotLock(sys.argv[1], sys.argv[2]):\n    print('in', flush=True); time.sleep(1.5)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, "key", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "in"
    t0 = time.time()
    with SlotLock("key", tmp_path):
        waited = time.time() - t0
    holder.wait()
    assert waited > 0.5  # it waited for the other process to let go
    with SlotLock("another key", tmp_path):  # other studies are not held up
        pass


def test_worker_command_line_keeps_the_flags_but_not_jobs():
    argv = ["--dataset", "digits", "--jobs", "4", "--trials", "8", "--jobs=2"]
    assert worker_argv(argv, 3) == ["--dataset", "digits", "--trials", "8", "--worker", "3"]


def test_commands_find_a_journal_study_before_the_sqlite_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None, "x") == "sqlite:///results/x.db"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.journal").write_text("")
    assert resolve_url(None, "x") == "journal:results/x.journal" == default_journal("x")
    assert resolve_url("results/x.db", "x") == "sqlite:///results/x.db"  # an explicit storage wins


def test_a_sqlite_study_is_copied_to_the_journal_with_its_trials_and_settings(tmp_path):
    s = settings()
    db = f"sqlite:///{tmp_path / 's.db'}"
    study = memory_study(s, storage=open_storage(db))
    Search(study, s, 10, FakeTrain(), 2, log=lambda _: None).run()
    journal = f"journal:{tmp_path / 's.journal'}"
    assert migrate_to_journal(db, journal, "test")
    copied = optuna.load_study(study_name="test", storage=open_storage(journal, create=False))
    assert stored_settings(copied) == s
    assert [(t.number, t.state, t.value, t.user_attrs) for t in copied.trials] == \
        [(t.number, t.state, t.value, t.user_attrs) for t in study.trials]
    assert not migrate_to_journal(f"sqlite:///{tmp_path / 'none.db'}", f"journal:{tmp_path / 'n.journal'}", "test")


def test_jobs_with_an_explicit_sqlite_storage_is_refused(tmp_path):
    r = run_main("search.run", *DIGITS, "--jobs", "2", "--storage", "s.db", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: --jobs 2 needs a storage several processes can write")
    r = run_main("search.run", *DIGITS, "--jobs", "zero", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --jobs must be a positive integer or auto")


def test_bench_measures_job_counts_and_projects_the_run(tmp_path):
    # The one real run of search.bench (two spawned jobs, measured twice); its logic over several job counts,
    # with made-up rates, is in test_second_hour_search.
    r = cli(tmp_path, "search.bench", "--device", "cpu", "--dataset", "digits", "--jobs", "2", "--genomes", "1",
            "--seconds", "0.5", "--batch-size", "8", "--trials", "10", "--repeats", "2", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["trials"] == 10 and len(out["genomes"]) == 1
    assert out["genomes"][0]["params"] <= 200_000
    (row,) = out["rows"]
    assert row["jobs"] == 2 and row["images_per_s"] > 0 and len(row["runs"]) == 2
    assert row["per_job_images_per_s"] == pytest.approx(row["images_per_s"] / 2, abs=0.1)
    assert row["total_seconds"] == pytest.approx(row["search_seconds"] + row["final_seconds"], abs=0.2)
    # On a busy machine the two runs may disagree: whichever happened, the verdict must follow from the figures.
    from search.bench import assess
    again = [{k: row[k] for k in ("jobs", "images_per_s", "runs", "agreed")}]
    assert assess(again) == out["warnings"] and again[0]["reliable"] == row["reliable"] == out["reliable"]
    assert ("warning: " in r.stderr) == bool(out["warnings"]) and ("unreliable" in r.stdout) == (not row["reliable"])
    if row["reliable"]:
        assert out["best_jobs"] == 2 and "fastest: --jobs 2," in r.stdout
    else:
        assert out["best_jobs"] is None and "fastest: unknown" in r.stdout
