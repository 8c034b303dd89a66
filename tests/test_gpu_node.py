"""A GPU node, all of it, tested on a CPU: workers placed over faked GPUs (which worker gets which device,
what its environment holds), --jobs auto per GPU, memory shared on purpose (mocked CUDA calls), and a
search that runs out of memory (injected errors) yet trains exactly N, with every failure explained."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
from optuna.trial import TrialState

from search import memory
from search.memory import DeviceShare, guard, is_out_of_memory, memory_fraction
from search.workers import DEVICE_ENV, SHARE_ENV
from search.workers import plan_workers, run_workers
from tests.search_helpers import Stats, FakeResult

GIB = 2**30


def fake_node(monkeypatch, gpus: int, free_gib: list[float] | None = None, total_gib: float = 80.0) -> list:
    """A CUDA build of torch that sees `gpus` GPUs, with each one's free memory; returns the set fractions."""
    free = free_gib or [total_gib] * gpus
    fractions = []
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake H100")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (int(free[torch.device(d).index] * GIB),
                                                               int(total_gib * GIB)))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: type("Props", (), {"total_memory": int(total_gib * GIB)})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: fractions.append((f, d)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return fractions


class FakePopen:
    """Records what run_workers starts; every worker 'exits' at once with status 0."""
    started: list = []

    def __init__(self, argv, env=None, process_group=None):
        FakePopen.started.append((argv, env))
        self.returncode = 0

    def poll(self):
        return 0


# --- placement -------------------------------------------------------------------------------------------

def test_jobs_8_on_a_4_gpu_node_puts_2_workers_on_each_and_each_sees_its_own(monkeypatch):
    fake_node(monkeypatch, 4)
    monkeypatch.setattr("search.workers.subprocess", SimpleNamespace(Popen=FakePopen))
    FakePopen.started = []
    placement = plan_workers("cuda", 8)
    assert placement.devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:3") * 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a Slurm mask: worker k gets the parent's entry
    codes, _ = run_workers(["--trials", "9", "--device", "cuda", "--jobs", "8"], 8, 2, placement=placement)
    assert codes == [0] * 8
    for k, (argv, env) in enumerate(FakePopen.started):
        assert argv[argv.index("--device") + 1] == "cuda:0" and argv.count("--device") == 1
        assert "--jobs" not in argv and argv[argv.index("--worker") + 1] == str(k)
        assert env["CUDA_VISIBLE_DEVICES"] == str(4 + k % 4)
        assert env[DEVICE_ENV] == f"cuda:{k % 4}" and env[SHARE_ENV] == "2" and env["OMP_NUM_THREADS"] == "2"


def test_a_listed_subset_of_gpus_gets_the_workers_and_one_gpu_stays_one(monkeypatch):
    fake_node(monkeypatch, 4)
    assert plan_workers("cuda:0,cuda:2", 4).devices == ("cuda:0", "cuda:2", "cuda:0", "cuda:2")
    assert plan_workers("cuda:3", 3).devices == ("cuda:3",) * 3
    assert plan_workers("cpu", 2).devices == ("cpu", "cpu")
    env = plan_workers("cuda:3", 3).env(1, {})
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env[SHARE_ENV] == "3"


def test_jobs_auto_sizes_every_gpu_by_its_own_free_memory(monkeypatch):
    fake_node(monkeypatch, 4, free_gib=[40.0, 9.0, 2.0, 79.0])
    monkeypatch.setattr("train.device.available_cpus", lambda: 64)
    placement = plan_workers("cuda", "auto")
    # 40 GiB / 4 GiB a worker = 10, capped at 8 per GPU; 9 -> 2; 2 -> still 1; 79 -> 8
    assert [placement.devices.count(f"cuda:{i}") for i in range(4)] == [8, 2, 1, 8]
    assert placement.devices[:4] == ("cuda:0", "cuda:1", "cuda:2", "cuda:3")  # interleaved, all GPUs busy at once
    monkeypatch.setattr("train.device.available_cpus", lambda: 8)  # a CPU core a worker: cut the fullest first
    assert [plan_workers("cuda", "auto").devices.count(f"cuda:{i}") for i in range(4)] == [2, 2, 1, 3]
    assert plan_workers("cpu", "auto").devices == ("cpu",)


def test_search_run_spreads_its_workers_over_every_gpu_and_retrains_on_one(monkeypatch, tmp_path, capsys):
    from search import run
    fake_node(monkeypatch, 4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("search.workers.subprocess", SimpleNamespace(Popen=FakePopen))
    monkeypatch.setattr("search.run.signal.signal", lambda *a: None)
    FakePopen.started = []
    code = run.main(["--dataset", "synthetic", "--trials", "8", "--jobs", "8", "--device", "CUDA"])
    out, err = capsys.readouterr()
    assert code == 1 and "the workers stopped" in err  # the fake workers trained nothing
    assert "8 workers at once (cuda:0 x2, cuda:1 x2, cuda:2 x2, cuda:3 x2)" in out
    assert "per trial on cuda:0" in out  # the parent's own device (its final retrain): the first GPU
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for _, env in FakePopen.started) == sorted("01230123")


def test_a_device_list_with_one_job_is_one_error_line(monkeypatch, tmp_path, capsys):
    from search import run
    from search.cli import ERRORS
    from space.cli import run_cli
    fake_node(monkeypatch, 4)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run.main(["--dataset", "synthetic", "--device", "cuda:0,cuda:2"]), errors=ERRORS)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--jobs 1 trains on one" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_search_bench_measures_with_every_gpu(monkeypatch):
    from search import bench
    fake_node(monkeypatch, 4)
    assert bench.job_devices(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 6) == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert bench._job_counts(None, "cuda", gpus=4)[-1] == 32  # up to 8 a GPU


# --- memory shared on purpose ---------------------------------------------------------------------------

def test_workers_sharing_a_gpu_cap_their_share_and_a_lone_one_does_not(monkeypatch):
    fractions = fake_node(monkeypatch, 2, total_gib=80.0)
    assert memory.apply_share("cuda:0", 1) is None and memory.apply_share("cpu", 4) is None
    assert fractions == []
    f = memory.apply_share("cuda:0", 4)
    assert fractions == [(f, torch.device("cuda", 0))]
    assert f == pytest.approx((80 - 4 * memory.CONTEXT_GIB) / 80 / 4)  # contexts outside the cap, rest split
    assert memory_fraction(4, 80 * GIB, alone=True) == pytest.approx(4 * f)


def test_a_retry_alone_waits_for_the_running_trials_and_holds_off_new_ones(tmp_path, monkeypatch):
    fractions = fake_node(monkeypatch, 1)
    events, started = [], threading.Event()
    a, b = (DeviceShare("study", "cuda:0", 2, tmp_path) for _ in range(2))

    def running_trial():
        with a.shared():
            started.set()
            time.sleep(0.3)
            events.append("running trial done")

    t = threading.Thread(target=running_trial)
    t.start()
    started.wait()
    late = threading.Thread(target=lambda: (time.sleep(0.1), a.shared().__enter__(), events.append("new trial")))
    with b.alone():
        late.start()
        events.append("retry alone")
        time.sleep(0.2)  # the new trial, asked for meanwhile, waits
        events.append("retry done")
    late.join()
    t.join()
    assert events == ["running trial done", "retry alone", "retry done", "new trial"]
    assert [round(f, 4) for f, _ in fractions] == [round(memory_fraction(2, 80 * GIB, alone=True), 4),
                                                   round(memory_fraction(2, 80 * GIB), 4)]  # lifted, then restored


@pytest.mark.parametrize("error, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised_in_all_its_forms(error, oom):
    assert is_out_of_memory(error) == oom
    try:  # also as the cause of another error, as torch.compile wraps them
        raise RuntimeError("backend compiler failed") from error
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped) == oom


def test_a_trial_out_of_memory_after_reporting_is_retried_without_reporting_twice(tmp_path):
    from train.engine import TrainConfig
    calls, reported = [], []

    def train_once(genome, config, on_epoch):
        calls.append(config.batch_size)
        on_epoch(Stats(1, 0.5))
        if len(calls) == 1:
            raise RuntimeError("CUDNN_STATUS_ALLOC_FAILED")
        on_epoch(Stats(2, 0.6))
        return FakeResult("completed", [Stats(1, 0.5), Stats(2, 0.6)])

    alone = guard(train_once, TrainConfig(batch_size=64), DeviceShare("k", "cpu", 2, tmp_path))
    result = alone(None, lambda s: reported.append(s.epoch) and False)
    assert calls == [64, 64] and reported == [1, 2]  # the same recipe again, alone; epoch 1 told the pruner once
    assert "alone on its device (shared by 2 workers)" in result.oom_retry and "CUDNN_STATUS_ALLOC_FAILED" in result.oom_retry
    calls.clear()
    half = guard(train_once, TrainConfig(batch_size=64, lr=0.2), DeviceShare("k", "cpu", 1, tmp_path))
    assert "at half the batch (32)" in half(None, lambda s: False).oom_retry and calls == [64, 32]


def test_a_candidate_that_never_fits_is_too_large_and_the_sampler_sees_it(tmp_path):
    from search.lifecycle import classify, count
    from search.loop import Search
    from tests.search_helpers import FakeTrain, memory_study, settings

    s = settings(trial_epochs=2)
    study = memory_study(s)
    fake = FakeTrain(epochs=2)
    first = []

    def train_once(genome, config, on_epoch):
        if not first or genome.to_json() == first[0]:
            first[:1] = [genome.to_json()]
            raise torch.OutOfMemoryError("CUDA out of memory")
        return fake(genome, on_epoch)

    from train.engine import TrainConfig
    fn = guard(train_once, TrainConfig(batch_size=32), DeviceShare("k", "cpu", 1, tmp_path))
    Search(study, s, 10, fn, 4, log=lambda _: None).run()
    trials = study.get_trials()
    big = [t for t in trials if classify(t) == "too large"]
    assert len(big) == 1 and big[0].user_attrs["genome"] == first[0]
    assert big[0].state == TrialState.PRUNED and big[0].constraints["memory"] == 1.0  # infeasible for TPE
    assert "too large for this device" in big[0].user_attrs["too_large"]
    c = count(trials)
    assert c.trained == 4 and c.too_large == 1 and "1 too large for this device" in c.line()
