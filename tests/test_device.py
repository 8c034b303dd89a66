"""Device handling without a GPU: identity, the loader's copy/pin branch, RNG states from any map_location,
bf16 gating, the OOM clean-up, CPU affinity, and --device checked up front by every command line."""
from __future__ import annotations

import os
import weakref

import numpy as np
import pytest
import torch

from space import Genome, Head, Layer
from space.cli import run_cli
from train.data import make_synthetic
from train.device import (DeviceError, available_cpus, canonical_device, check_device, resolve_device, same_device,
                          use_bf16)
from train.engine import TrainConfig, WeightEMA, restore_rng_states, rng_states, train
from train.loader import DeviceLoader, pin_before_copy

TINY = Genome([[Layer("conv3", 8)], [Layer("dsc3", 8, stride=2)], [Layer("dsc3", 8, stride=2)],
               [Layer("dsc3", 8, dilation=2)]], Head(dropout=0.0))
MEAN, STD = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25])
CUDA_AT_0 = lambda kind: 0  # noqa: E731 - a stand-in for torch.cuda.current_device() on a CPU-only machine


# --- identity --------------------------------------------------------------------------------------------

def test_devices_with_and_without_an_index_are_the_same_device():
    assert torch.device("cpu", 0) != torch.device("cpu")  # torch's own comparison: the bug this guards against
    assert same_device(torch.device("cpu", 0), "cpu") and same_device("cpu", torch.zeros(1).device)
    assert same_device("cuda", "cuda:0", CUDA_AT_0) and same_device(torch.device("cuda"), torch.device("cuda", 0),
                                                                    CUDA_AT_0)
    assert not same_device("cuda", "cuda:1", CUDA_AT_0)
    assert same_device("cuda", "cuda:1", lambda kind: 1)  # a bare cuda is whichever device is current
    assert not same_device("cpu", "cuda:0", CUDA_AT_0) and not same_device("cpu", "meta")


def test_canonical_device_is_what_tensors_on_it_report():
    assert canonical_device("cpu:0") == torch.zeros(1, device="cpu:0").device == torch.device("cpu")
    assert canonical_device("cuda", CUDA_AT_0) == torch.device("cuda", 0)
    assert canonical_device("cuda:3", CUDA_AT_0) == torch.device("cuda", 3)
    assert resolve_device("cpu:0") == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")


# --- the loader's transfer branch ------------------------------------------------------------------------

def _images(n=96):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("keep_on_device", [True, False])
@pytest.mark.parametrize("train_mode", [True, False])
def test_data_already_on_the_loaders_device_is_never_copied_or_pinned(monkeypatch, keep_on_device, train_mode):
    x, y = _images()
    reference = [b for b in DeviceLoader(x, y, MEAN, STD, 32, "cpu", train=train_mode, seed=3,
                                         keep_on_device=keep_on_device)]

    def refuse(*args, **kwargs):
        raise AssertionError("a batch already on the device was sent again")

    monkeypatch.setattr(DeviceLoader, "_send", refuse)
    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    loader = DeviceLoader(x, y, MEAN, STD, 32, torch.device("cpu", 0), train=train_mode, seed=3,
                          keep_on_device=keep_on_device)
    batches = list(loader)
    assert len(batches) == len(reference) == 3
    for (xa, ya), (xb, yb) in zip(batches, reference):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_host_batches_for_another_device_are_sent_once_each(monkeypatch):
    # "meta" stands in for a GPU: the images stay on the host and each batch must be sent over exactly once.
    x, y = _images()
    sent = []
    original = DeviceLoader._send
    monkeypatch.setattr(DeviceLoader, "_send", lambda self, t: sent.append(t.device) or original(self, t))
    loader = DeviceLoader(x, y, MEAN, STD, 32, "meta", train=False, keep_on_device=False)
    batches = list(loader)
    assert all(xb.device.type == "meta" and yb.device.type == "meta" for xb, yb in batches)
    assert sent == [torch.device("cpu")] * (2 * len(loader))  # x and y of each batch, from the host


def test_only_host_tensors_going_to_a_gpu_are_pinned():
    assert pin_before_copy(torch.device("cpu"), torch.device("cuda", 0))
    assert not pin_before_copy(torch.device("cuda", 0), torch.device("cuda", 0))  # CUDA tensors cannot be pinned
    assert not pin_before_copy(torch.device("cpu"), torch.device("cpu"))
    assert not pin_before_copy(torch.device("cpu"), torch.device("mps", 0))


# --- RNG states whatever map_location ----------------------------------------------------------------------

def test_rng_states_come_back_as_cpu_byte_tensors_whatever_map_location(tmp_path):
    torch.manual_seed(123)
    saved = rng_states(torch.device("cpu"))
    expected = torch.rand(5)
    path = tmp_path / "ckpt.pt"
    torch.save({**saved, "w": torch.ones(3)}, path)
    state = torch.load(path, map_location="meta", weights_only=True)  # every tensor lands off the CPU
    assert state["w"].device.type == "meta"
    with pytest.raises((TypeError, RuntimeError, NotImplementedError)):  # the old tensor format there: refused
        torch.set_rng_state(torch.get_rng_state().to("meta"))
    torch.manual_seed(0)
    restore_rng_states(state, torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected)


def test_checkpoints_that_hold_rng_tensors_still_restore():
    torch.manual_seed(7)
    old = {"rng_cpu": torch.get_rng_state(), "rng_cuda": None}  # the format before bytes
    expected = torch.rand(3)
    restore_rng_states(old, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_loaded_onto_another_device_resumes(tmp_path, monkeypatch):
    import train.engine as engine

    data = make_synthetic(128, 32)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", checkpoint=str(tmp_path / "c.pt"))
    whole = train(TINY, TrainConfig(**{**cfg.__dict__, "checkpoint": None}), data)
    first = train(TINY, cfg, data, on_epoch=lambda s: s.epoch == 1)
    assert first.status == "stopped"
    real = engine.load_weights

    def as_if_from_a_gpu(path, map_location="cpu"):
        state = real(path, map_location="cpu")
        elsewhere = real(path, map_location="meta")  # what a load onto another device does to every tensor
        return {**state, "rng_cpu": elsewhere["rng_cpu"], "rng_cuda": elsewhere["rng_cuda"]}

    monkeypatch.setattr(engine, "load_weights", as_if_from_a_gpu)
    resumed = train(TINY, cfg, data)
    assert resumed.resumed_epochs == 1 and resumed.status == "completed"
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


# --- smaller ones -----------------------------------------------------------------------------------------

def test_bf16_autocast_only_on_cuda_gpus_that_have_it():
    assert not use_bf16(torch.device("cpu"), True)
    assert not use_bf16(torch.device("cuda", 0), False, lambda: True)
    assert not use_bf16(torch.device("cuda", 0), True, lambda: False)  # pre-Ampere: float32
    assert use_bf16(torch.device("cuda", 0), True, lambda: True)


def test_ema_copies_integer_buffers_such_as_bn_step_counts():
    from space import build
    model = build(TINY)
    ema = WeightEMA(model, 0.9)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    model(torch.randn(4, 3, 32, 32))
    ema.update()
    live = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    copied = {k: v for k, v in ema.model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert live and all(int(v) == 2 for v in live.values())
    assert all(torch.equal(copied[k], live[k]) for k in live)


def test_after_out_of_memory_the_cache_is_emptied_once_the_trials_tensors_are_gone(monkeypatch):
    import train.engine as engine
    from search.loop import make_train_fn
    from search.settings import SearchSettings

    held = []

    def oom(genome, config, data, on_epoch=None):
        activations = torch.zeros(1000)  # referenced only by this frame, i.e. by the exception's traceback
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alive_at_empty_cache = []
    monkeypatch.setattr(engine, "train", oom)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_empty_cache.append(held[0]() is not None))
    settings = SearchSettings(dataset="synthetic", max_params=200_000, min_rf=44, trial_epochs=1, val_size=0.25,
                              seed=0, subset_train=None, batch_size=32, lr=0.01, augment=False)
    from search.memory import TooLarge
    with pytest.raises(TooLarge, match="too large for this device: out of memory at batch 32 .* half the batch"):
        make_train_fn(make_synthetic(64, 16), settings, "cpu")(TINY, lambda s: False)
    assert len(held) == 2  # tried once more, at half the batch
    assert alive_at_empty_cache == [False, False]  # each time only once the attempt's tensors were gone


def test_cpu_count_follows_the_affinity_mask(monkeypatch):
    from search.workers import auto_jobs, cpu_threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 1 and cpu_threads(1) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert available_cpus() == 4 and cpu_threads(2) == 2
    assert auto_jobs("cpu") == 1


# --- --device checked up front ----------------------------------------------------------------------------

BAD_DEVICES = ["cuda", "cuda:0", "CUDA", "Cuda:01", "mps", "foo"]


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch can use CUDA")
@pytest.mark.parametrize("name", BAD_DEVICES)
def test_check_device_says_what_torch_can_see(name):
    with pytest.raises(DeviceError) as e:
        check_device(name)
    text = str(e.value)
    assert "\n" not in text and "cpu only" in text
    if name.lower().startswith("cuda"):
        assert "CPU-only build" in text and "setup.sh" in text and "nvidia-smi" in text
        # the command it names is one setup.sh runs (issue 37: `bash setup.sh` alone only printed its usage)
        import re
        from pathlib import Path
        command = re.search(r"`\./setup\.sh (\w+)`", text)
        script = (Path(__file__).resolve().parents[1] / "setup.sh").read_text()
        assert command and re.search(rf"^\s+{command.group(1)}\)$", script, re.M), text
    assert check_device("cpu") == torch.device("cpu") and check_device("auto") == torch.device("cpu")


def _commands():
    from search import retrain, run
    from search.bench import main as search_bench
    from search.cli import ERRORS
    from train import bench, run as train_run
    from train.data import DataError
    from train.engine import TrainError
    from space.genome import GenomeError
    train_errors = (GenomeError, DataError, TrainError, DeviceError)
    return {
        "search.run": (run.main, ["--dataset", "synthetic", "--trials", "1"], ERRORS),
        "search.retrain": (retrain.main, ["--study-name", "x"], ERRORS),
        "search.bench": (search_bench, ["--jobs", "1"], ERRORS),
        "train.run": (train_run.main, ["seed003_net", "--dataset", "synthetic", "--epochs", "1"], train_errors),
        "train.bench": (bench.main, ["seed003_net", "--dataset", "synthetic"], train_errors),
    }


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch can use CUDA")
@pytest.mark.parametrize("command", ["search.run", "search.retrain", "search.bench", "train.run", "train.bench"])
@pytest.mark.parametrize("name", BAD_DEVICES)
def test_a_device_torch_cannot_use_is_one_error_line_exit_2_and_nothing_written(command, name, capsys, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # every default output (results/...) would land here
    main, argv, errors = _commands()[command]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main([*argv, "--device", name]), errors=errors)
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert e.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: --device") and "can see" in lines[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_bare_cuda_device_trains_and_a_checkpoint_resumes(tmp_path, monkeypatch):
    # The real thing on a GPU node: `cuda` (no index) against tensors on cuda:0, and RNG states restored there.
    x, y = _images()
    monkeypatch.setattr(DeviceLoader, "_send", lambda self, t: (_ for _ in ()).throw(AssertionError("re-sent")))
    assert len(list(DeviceLoader(x, y, MEAN, STD, 32, "cuda", train=True, augment=None))) == 3
    monkeypatch.undo()
    data = make_synthetic(128, 32)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cuda", checkpoint=str(tmp_path / "c.pt"))
    assert train(TINY, cfg, data, on_epoch=lambda s: True).status == "stopped"
    resumed = train(TINY, cfg, data)
    assert resumed.status == "completed" and resumed.resumed_epochs == 1 and resumed.device.startswith("cuda")


# --- one canonical spelling of the device, everywhere -----------------------------------------------------

@pytest.mark.parametrize("name, canonical", [(" cpu", "cpu"), ("CPU", "cpu"), ("Cpu:0", "cpu"), ("cpu:01", "cpu"),
                                             (" auto ", None)])
def test_forgiving_spellings_give_one_canonical_device(name, canonical):
    assert str(check_device(name)) == (canonical or str(resolve_device("auto")))


def _fake_cuda(monkeypatch, count: int, capability=(9, 0)):
    """A CUDA build of torch that sees `count` GPUs, on this CPU-only machine: the queries check_device asks."""
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)


def test_on_a_cuda_build_any_spelling_of_a_gpu_is_its_canonical_index(monkeypatch):
    from train.device import check_devices
    _fake_cuda(monkeypatch, 4)
    assert check_device("CUDA") == torch.device("cuda", 0)
    assert check_device("cuda:01") == torch.device("cuda", 1)  # torch.device("cuda:01") itself refuses it
    assert check_device(" Cuda:3 ") == torch.device("cuda", 3)
    with pytest.raises(DeviceError, match="sees 4 CUDA device"):
        check_device("cuda:4")
    # For --jobs: a bare cuda (or auto) is every GPU; a list is those, each once, CUDA only.
    assert check_devices("cuda") == check_devices("auto") == [torch.device("cuda", i) for i in range(4)]
    assert check_devices("cuda:2") == [torch.device("cuda", 2)]
    assert check_devices("cuda:0, CUDA:2") == [torch.device("cuda", 0), torch.device("cuda", 2)]
    for bad, text in [("cuda:0,cuda:00", "twice"), ("cpu,cuda:1", "CUDA devices only"), ("cuda:0,cuda:9", "sees 4")]:
        with pytest.raises(DeviceError, match=text):
            check_devices(bad)


def test_bf16_is_asked_of_the_device_trained_on_not_the_current_one(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: asked.append(d) or ((7, 0) if torch.device(d).index == 1 else (8, 0)))
    assert use_bf16(torch.device("cuda", 0), True) and not use_bf16(torch.device("cuda", 1), True)  # a V100 at 1
    assert asked == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_synchronize_waits_on_the_run_s_device(monkeypatch):
    from train.device import synchronize
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    synchronize("cpu")
    synchronize(torch.device("cuda", 2))
    assert waited == [torch.device("cuda", 2)]


def test_the_test_set_is_scored_in_float32_as_the_files_ship(monkeypatch):
    # Pretend bf16 autocast applies here (as on a GPU, amp on): the reported accuracy must not use it.
    import train.engine as engine
    from train.testset import score_test_set
    monkeypatch.setattr(engine, "use_bf16", lambda device, amp, *a: amp)
    from space import build
    data = make_synthetic(64, 64)
    model = build(TINY).eval()
    bf16, _, bf16_loss = engine.predict_images(model, data.x_test, data.y_test, data.mean, data.std, amp=True)
    fp32, labels, fp32_loss = engine.predict_images(model, data.x_test, data.y_test, data.mean, data.std, amp=False)
    assert not torch.equal(bf16, fp32)  # the stand-in does change the arithmetic
    scores = score_test_set(model, data, "cpu")
    assert scores.loss == pytest.approx(fp32_loss, abs=1e-7) and scores.loss != pytest.approx(bf16_loss, abs=1e-7)
    assert scores.acc == float((fp32.argmax(1) == labels).float().mean())


def test_search_trials_skip_the_flip_tta_evaluation_the_pruner_never_reads(monkeypatch):
    import train.engine as engine
    from search.loop import make_train_fn
    from search.settings import SearchSettings
    seen = []
    monkeypatch.setattr(engine, "train", lambda genome, config, data, on_epoch=None: seen.append(config))
    settings = SearchSettings(dataset="synthetic", max_params=200_000, min_rf=44, trial_epochs=1, val_size=0.25,
                              seed=0, subset_train=None, batch_size=32, lr=0.01, augment=True)
    make_train_fn(make_synthetic(64, 16), settings, "cpu")(TINY, lambda s: False)
    assert seen[0].tta is False and seen[0].eval_every == 1
    assert settings.train_config(1, "cpu").tta  # the final retrain keeps it where training flips


def _baseline_main(argv):
    from train import baseline
    return baseline.main(argv)


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch can use CUDA")
@pytest.mark.parametrize("name", ["CUDA", "cuda"])
def test_train_baseline_checks_its_device_like_every_command(name, capsys, tmp_path, monkeypatch):
    from train.data import DataError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: _baseline_main(["seed003_net", "--dataset", "synthetic", "--device", name]),
                errors=(DataError, DeviceError))
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: --device"), lines
    assert list(tmp_path.iterdir()) == []


def test_every_command_runs_on_the_canonical_device_whatever_its_spelling(capsys, tmp_path, monkeypatch):
    import json
    monkeypatch.chdir(tmp_path)
    cmds = _commands()

    def run(command, argv):
        main, _, errors = cmds[command] if command in cmds else (_baseline_main, None, ())
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: main(argv), errors=errors)
        out, err = capsys.readouterr()
        assert e.value.code == 0, err
        return json.loads(out.strip().splitlines()[-1])

    tiny = ["--dataset", "synthetic", "--trials", "1", "--trial-epochs", "1", "--batch-size", "16",
            "--subset-train", "128", "--subset-test", "64", "--study-name", "s", "--no-presets", "--json"]
    assert run("search.run", [*tiny, "--device", " Cpu", "--no-final"])["trained"] == 1
    from search.cli import open_existing
    import argparse
    study, _ = open_existing(argparse.Namespace(storage=None, study_name="s"))
    assert {t.user_attrs.get("device") for t in study.get_trials() if "device" in t.user_attrs} == {"cpu"}
    # The retrain alone: no baselines beside it, no ONNX files (deploy runs on ONNX Runtime's CPU whatever the
    # device; test_deploy covers it).
    monkeypatch.setattr("search.final.deploy_final", lambda *a, **k: {"skipped": "not under test"})
    final = run("search.retrain", ["--study-name", "s", "--final-epochs", "1", "--device", "cpu:01", "--compare",
                                   "none", "--json"])
    assert json.loads((tmp_path / final["out"] / "final.json").read_text())["device"] == "cpu"
    out = run("train.run", ["seed003_net", "--dataset", "synthetic", "--epochs", "1", "--subset", "128",
                            "--batch-size", "32", "--device", "CPU:0", "--quiet", "--json", "--out", "r"])
    assert out["device"] == "cpu"
    out = run("train.bench", ["seed003_net", "--dataset", "synthetic", "--seconds", "0.2", "--repeats", "1",
                              "--device", " cpu", "--json"])
    assert out["device"] == "cpu" and out["pipeline_images_per_s"] > 0
    out = run("train.baseline", ["seed003_net", "--dataset", "synthetic", "--seconds", "0.2", "--workers", "0",
                                 "--device", "cpu:01"])
    assert out["device"] == "cpu" and out["baseline_images_per_s"] > 0
