import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from space import Genome, Head, Layer
from train.data import load_digits32, make_synthetic, write_cifar_batches
from train.engine import TrainConfig, evaluate, train

TINY = Genome([[Layer("conv3", 16)], [Layer("dsc3", 24, stride=2)], [Layer("dsc3", 32, stride=2)],
               [Layer("dsc3", 32, dilation=2)]], Head(dropout=0.1))


def cfg(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 0.05, "device": "cpu", **kw})


def test_a_few_epochs_on_digits_beat_chance_clearly():
    data = load_digits32()
    result = train(TINY, cfg(epochs=6), data)
    assert result.status == "completed" and result.epochs == 6
    assert result.val_acc > 0.4  # chance is 0.1
    loss, acc = evaluate(result.model, data.x_test, data.y_test, data.mean, data.std)
    assert acc == pytest.approx(result.val_acc, abs=1e-6) and loss > 0


def test_non_finite_loss_stops_the_run_with_a_clear_status():
    result = train(TINY, cfg(lr=1e30, nan_check_every=1), make_synthetic(256, 64))
    assert result.status == "diverged"
    assert "non-finite" in result.message
    assert result.epochs == 0  # no epoch of garbage is reported as finished


def test_on_epoch_returning_true_stops_training():
    seen = []
    result = train(TINY, cfg(epochs=5), make_synthetic(256, 64), on_epoch=lambda s: seen.append(s.epoch) or s.epoch == 2)
    assert result.status == "stopped" and seen == [1, 2] and result.epochs == 2


def test_same_seed_gives_the_same_weights():
    data = make_synthetic(256, 64)
    a, b = (train(TINY, cfg(epochs=2), data).model.state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    data = make_synthetic(256, 64)
    full = train(TINY, cfg(checkpoint=str(tmp_path / "a.pt")), data)
    # "crash" after epoch 2: the checkpoint written at the end of epoch 2 survives
    interrupted = train(TINY, cfg(checkpoint=str(tmp_path / "b.pt")), data, on_epoch=lambda s: s.epoch == 2)
    assert interrupted.epochs == 2
    resumed = train(TINY, cfg(checkpoint=str(tmp_path / "b.pt")), data)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert resumed.val_acc == pytest.approx(full.val_acc, abs=1e-6)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    data = make_synthetic(256, 64)
    train(TINY, cfg(epochs=1, checkpoint=str(tmp_path / "c.pt")), data)
    other = Genome(TINY.blocks, Head(dropout=0.0))
    with pytest.raises(ValueError, match="belongs to another model"):
        train(other, cfg(epochs=1, checkpoint=str(tmp_path / "c.pt")), data)


def test_eval_every_zero_touches_the_held_out_part_only_at_the_end():
    result = train(TINY, cfg(epochs=3, eval_every=0), make_synthetic(256, 64))
    assert [np.isnan(h.val_acc) for h in result.history] == [True, True, False]


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_train_run_reports_test_accuracy_and_writes_outputs(tmp_path):
    data = make_synthetic(320, 100)
    write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py", data)
    spec = tmp_path / "g.json"
    spec.write_text(TINY.to_json())
    out = tmp_path / "out"
    r = run("train.run", str(spec), "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "2",
            "--batch-size", "64", "--out", str(out), "--json", "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["epochs"] == 2
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "history.csv", "report.txt", "model.pt", "checkpoint.pt"}
    assert "precision" in (out / "report.txt").read_text()


@pytest.mark.parametrize("args, text", [
    (["seed003_net", "--dataset", "imagenet", "--epochs", "1"], "imagenet"),
    (["seed003_net", "--dataset", "digits", "--epochs", "0"], "--epochs must be a positive integer"),
    (["no_such_net", "--dataset", "digits", "--epochs", "1"], "neither a preset"),
])
def test_train_run_bad_input_gives_one_line_and_exit_2(args, text):
    r = run("train.run", *args)
    assert r.returncode == 2
    assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_reports_pipeline_and_model_only_throughput():
    r = run("train.bench", "seed003_net", "--dataset", "synthetic", "--seconds", "0.3", "--repeats", "1",
            "--batch-size", "64", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["images_per_s"] == d["pipeline_images_per_s"] > 0 and d["model_only_images_per_s"] > 0
    assert d["pipeline_vs_model_only"] == pytest.approx(d["images_per_s"] / d["model_only_images_per_s"], rel=1e-2)
