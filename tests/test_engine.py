import copy
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from space import Genome, Head, Layer
from train.augment import AugmentConfig
from tests.search_helpers import run_main, write_cifar_batches
from train.data import load_dataset, load_digits32, make_synthetic
from train.defaults import DEFAULTS
from train.engine import (CheckpointError, TrainConfig, WeightEMA, augment_for_epoch, evaluate, load_weights,
                          make_optimizer, predict_images, train, tta_accuracy)

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


def _accuracy_is_the_confusion_matrix_diagonal(metrics: dict, n_test: int, out) -> None:
    """test_acc is the share of the n_test test images on the diagonal of out/metrics.json's confusion matrix."""
    cm = np.array(json.loads((out / "metrics.json").read_text())["confusion_matrix"])
    assert cm.sum() == n_test or n_test is None
    assert metrics["test_acc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)


def test_train_run_reports_test_accuracy_and_writes_outputs(tmp_path):
    data = make_synthetic(320, 100)
    write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py", data)
    spec = tmp_path / "g.json"
    spec.write_text(TINY.to_json())
    out = tmp_path / "out"
    r = run_main("train.run", str(spec), "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "2",
                 "--batch-size", "64", "--out", str(out), "--json", "--quiet", "--device", "cpu", "--min-rf", "25")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["epochs"] == 2
    _accuracy_is_the_confusion_matrix_diagonal(metrics, n_test=None, out=out)
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "history.csv", "report.txt", "model.pt", "checkpoint.pt"}
    assert "precision" in (out / "report.txt").read_text()


@pytest.mark.parametrize("args, text", [
    (["seed003_net", "--dataset", "imagenet", "--epochs", "1"], "imagenet"),
    (["seed003_net", "--dataset", "digits", "--epochs", "0"], "--epochs must be a positive integer"),
    (["no_such_net", "--dataset", "digits", "--epochs", "1"], "neither a preset"),
    (["seed003_net", "--dataset", "digits", "--warmup", "1"], "--warmup 1 is out of range"),
    (["seed003_net", "--dataset", "digits", "--weight-decay", "-0.1"], "--weight-decay -0.1 is out of range"),
    (["seed003_net", "--dataset", "digits", "--lr", "0"], "--lr 0 is out of range"),
])
def test_train_run_bad_input_gives_one_line_and_exit_2(args, text):
    r = run_main("train.run", *args)
    assert r.returncode == 2
    assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_reports_pipeline_and_model_only_throughput():
    r = run_main("train.bench", "seed003_net", "--dataset", "synthetic", "--seconds", "0.3", "--repeats", "1",
                 "--batch-size", "64", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["images_per_s"] == d["pipeline_images_per_s"] > 0 and d["model_only_images_per_s"] > 0
    assert d["pipeline_vs_model_only"] == pytest.approx(d["images_per_s"] / d["model_only_images_per_s"], rel=1e-2)


def test_ema_weights_are_what_is_evaluated_and_returned():
    data = make_synthetic(256, 64)
    raw = train(TINY, cfg(epochs=2, ema_decay=0.0), data)
    ema = train(TINY, cfg(epochs=2, ema_decay=0.9), data)
    a, b = raw.model.state_dict(), ema.model.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert type(ema.model) is type(raw.model)  # a plain module of the same architecture
    _, acc = evaluate(ema.model, data.x_test, data.y_test, data.mean, data.std)
    assert acc == pytest.approx(ema.val_acc, abs=1e-6)


def test_weight_ema_moves_each_tensor_by_one_minus_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for t in list(model.parameters()) + [model[1].running_mean]:
            t.add_(1.0)
    ema.update()  # first update: decay min(0.5, 2 / 11) = 2/11
    after, d = ema.model.state_dict(), 2.0 / 11.0
    for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean"):
        torch.testing.assert_close(after[k], before[k] + (1 - d) * 1.0)


def test_flip_tta_accuracy_is_reported_beside_the_plain_one():
    data = make_synthetic(256, 64)
    with_tta = train(TINY, cfg(epochs=2), data)
    without = train(TINY, cfg(epochs=2, tta=False), data)
    assert all(np.isfinite([h.val_acc, h.val_acc_tta]).all() for h in with_tta.history)
    assert [h.val_acc for h in with_tta.history] == [h.val_acc for h in without.history]  # the plain figure stays
    assert all(np.isnan(h.val_acc_tta) for h in without.history)
    logits, labels, _ = predict_images(with_tta.model, data.x_test, data.y_test, data.mean, data.std)
    flipped, _, _ = predict_images(with_tta.model, data.x_test, data.y_test, data.mean, data.std, flip=True)
    assert with_tta.history[-1].val_acc_tta == pytest.approx(tta_accuracy(logits, flipped, labels), abs=1e-6)


def test_augment_schedule_lowers_affine_and_cutout_linearly_and_keeps_flip():
    c = cfg(epochs=5, augment_start=1.0, augment_end=0.0)
    first, middle, last = (augment_for_epoch(c, e) for e in (1, 3, 5))
    assert first == c.augment
    assert (middle.affine_p, middle.cutout_p) == pytest.approx((0.25, 0.25))
    assert (last.affine_p, last.cutout_p, last.flip_p) == (0.0, 0.0, 0.5)
    assert augment_for_epoch(cfg(augment_start=1.0, augment_end=1.0), 3) == AugmentConfig()
    assert augment_for_epoch(cfg(augment=None, augment_end=0.0), 3) is None


@pytest.mark.parametrize("epochs, strength", [(5, 0.2), (8, 0.32), (15, 0.6), (25, 1.0), (60, 1.0)])
def test_augment_strength_grows_with_the_run_length_unless_given(epochs, strength):
    c = cfg(epochs=epochs, augment_full_epochs=25)
    assert c.augment_start is None and c.augment_strength() == pytest.approx(strength)
    first = augment_for_epoch(c, 1)
    assert (first.affine_p, first.cutout_p, first.flip_p) == pytest.approx((0.5 * strength, 0.5 * strength, 0.5))
    assert cfg(epochs=epochs, augment_start=0.7).augment_strength() == 0.7  # a given start wins


def test_augment_schedule_starts_from_augment_start():
    c = cfg(epochs=3, augment_start=0.5, augment_end=0.0)
    first, middle, last = (augment_for_epoch(c, e) for e in (1, 2, 3))
    assert (first.affine_p, first.cutout_p, first.flip_p) == pytest.approx((0.25, 0.25, 0.5))
    assert (middle.affine_p, middle.cutout_p) == pytest.approx((0.125, 0.125))
    assert (last.affine_p, last.cutout_p) == (0.0, 0.0)


def test_checkpoint_resume_with_ema_and_augment_schedule_matches_an_uninterrupted_run(tmp_path):
    data = make_synthetic(256, 64)
    c = dict(ema_decay=0.9, augment_end=0.0)
    full = train(TINY, cfg(checkpoint=str(tmp_path / "a.pt"), **c), data)
    train(TINY, cfg(checkpoint=str(tmp_path / "b.pt"), **c), data, on_epoch=lambda s: s.epoch == 2)
    resumed = train(TINY, cfg(checkpoint=str(tmp_path / "b.pt"), **c), data)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_garbage_checkpoint_is_refused_with_a_clear_error(tmp_path, content):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train(TINY, cfg(epochs=1, checkpoint=str(ckpt)), make_synthetic(256, 64))


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_checkpoint_that_would_run_code_is_refused_unexecuted(tmp_path, capsys):
    torch.save({"identity": _Evil()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "c.pt")
    assert "code ran" not in capsys.readouterr().out


def test_train_run_garbage_checkpoint_gives_one_line_and_exit_2(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_text("garbage")
    r = run_main("train.run", "seed003_net", "--dataset", "synthetic", "--epochs", "1", "--out",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint" in errors[0] and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0]


def test_train_run_takes_its_defaults_from_the_dataset_table_and_flags_override_them(tmp_path):
    d = DEFAULTS["synthetic"]
    r = run_main("train.run", "seed003_net", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path / "a"),
                 "--quiet", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout.strip().splitlines()[-1])["config"]
    assert (config["batch_size"], config["lr"], config["augment"]) == (d.batch_size, d.lr, None)
    assert config["ema_decay"] == TrainConfig.ema_decay and config["augment_end"] == TrainConfig.augment_end
    r = run_main("train.run", "seed003_net", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path / "b"),
                 "--quiet", "--json", "--device", "cpu", "--batch-size", str(2 * d.batch_size), "--augment",
                 "--ema-decay", "0", "--augment-end", "0.5", "--label-smoothing", "0", "--weight-decay", "1e-4",
                 "--warmup", "0.1")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    c = m["config"]
    assert (c["batch_size"], c["lr"]) == (2 * d.batch_size, pytest.approx(2 * d.lr))  # lr scales with the batch
    assert c["augment"] is not None and (c["ema_decay"], c["augment_end"], c["label_smoothing"]) == (0, 0.5, 0)
    assert (c["weight_decay"], c["pct_start"]) == (1e-4, 0.1)
    _accuracy_is_the_confusion_matrix_diagonal(m, len(load_dataset("synthetic", None).y_test), tmp_path / "b")
    assert isinstance(m["test_acc_tta"], float)  # --augment flips, so flip-TTA is reported beside it


def test_train_run_val_size_reports_validation_beside_test(tmp_path):
    r = run_main("train.run", "seed003_net", "--dataset", "synthetic", "--epochs", "2", "--val-size", "64", "--lr",
                 "0.01", "--out", str(tmp_path / "o"), "--quiet", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["config"]["lr"] == 0.01 and m["val_size"] == 64
    assert m["val_acc_tta"] is None and m["test_acc_tta"] is None  # flip-TTA only where training flips
    history = (tmp_path / "o" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_acc_tta" in history[0]
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    assert float(last["val_acc"]) == pytest.approx(m["val_acc"])  # the last epoch's validation figure
    assert abs(m["val_acc"] * 64 - round(m["val_acc"] * 64)) < 1e-3  # a share of the 64 held-out images
    _accuracy_is_the_confusion_matrix_diagonal(m, len(load_dataset("synthetic", None).y_test), tmp_path / "o")


@pytest.mark.parametrize("dataset", sorted(DEFAULTS))
def test_train_run_and_the_search_train_a_dataset_with_the_defaults_of_one_table(dataset, tmp_path):
    """No flags given: train.run and a search (its trials and final retrain) train `dataset` with
    train.defaults' batch size, lr and augmentation, and report flip-TTA alike (a table of their own would drift)."""
    from search.settings import resolve_settings
    from train import run

    d = DEFAULTS[dataset]
    args = run.build_parser().parse_args(["seed003_net", "--dataset", dataset])
    direct = run._config(args, d.final_epochs, "cpu", tmp_path, d.augment)  # d.augment: train.run with no --augment
    searched = resolve_settings({"dataset": dataset})[0].train_config(d.final_epochs, "cpu")
    for c in (direct, searched):
        assert (c.batch_size, c.lr, c.augment is not None, c.tta) == (d.batch_size, d.lr, d.augment, d.augment)
    assert direct.augment == searched.augment and direct.epochs == searched.epochs


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_importing_train_sets_no_albumentations_update_unless_the_user_did(preset, expected):
    import os
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    if preset is not None:
        env["NO_ALBUMENTATIONS_UPDATE"] = preset
    r = subprocess.run([sys.executable, "-c", "import os, train; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_train_run_saves_the_weights_it_evaluated(tmp_path):
    from space import build, get_preset
    from train.data import load_dataset
    out = tmp_path / "o"
    r = run_main("train.run", "seed003_net", "--dataset", "synthetic", "--epochs", "2", "--ema-decay", "0.9", "--out",
                 str(out), "--quiet", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    model = build(get_preset("seed003_net"))
    model.load_state_dict(load_weights(out / "model.pt"))  # a plain state_dict of the plain module
    data = load_dataset("synthetic", None)
    _, acc = evaluate(model, data.x_test, data.y_test, data.mean, data.std)
    assert acc == pytest.approx(m["test_acc"], abs=1e-6)


def test_seed_style_loop_reports_validation_and_test_accuracy():
    r = run("train.baseline", "seed003_net", "--dataset", "synthetic", "--epochs", "1", "--val-size", "64",
            "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["epochs"] == 1 and d["val_size"] == 64
    n_test = len(load_dataset("synthetic", None).y_test)
    # shares of the 64 held-out and of the test images: whole counts of correct images
    assert abs(d["val_acc"] * 64 - round(d["val_acc"] * 64)) < 1e-3
    assert abs(d["test_acc"] * n_test - round(d["test_acc"] * n_test)) < 1e-3 and d["train_seconds"] > 0


def test_bias_lr_scale_multiplies_the_peak_lr_of_bn_and_bias_parameters_only():
    from space import build
    model = build(TINY)
    optimizer, scheduler = make_optimizer(model, cfg(lr=0.1, bias_lr_scale=8.0), total_steps=100)
    weights, biases = optimizer.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim <= 1 for p in biases["params"])
    assert (weights["max_lr"], biases["max_lr"]) == pytest.approx((0.1, 0.8))
    assert (weights["weight_decay"], biases["weight_decay"]) == (cfg().weight_decay, 0.0)
    for _ in range(30):  # the whole schedule keeps the ratio
        optimizer.step()
        scheduler.step()
    assert biases["lr"] == pytest.approx(8.0 * weights["lr"])


def test_settings_added_later_leave_the_fingerprints_of_older_runs_unchanged():
    # Checkpoints and studies made before bias_lr_scale, alternate_flip and anneal existed must still resume:
    # these are the fingerprints the code computed then.
    before = dict(bias_lr_scale=1.0, augment_full_epochs=25, bn_refresh_steps=0)  # the recipe as it was: every later setting and
    # changed default at the value it had then
    assert TrainConfig(**before).fingerprint() == "d04e7bba5625b1d7"
    assert TrainConfig(epochs=8, lr=0.2, augment=None, **before).fingerprint() == "0b9871e43e90458f"
    assert TrainConfig(bias_lr_scale=2.0).fingerprint() != TrainConfig(**before).fingerprint()
    assert TrainConfig(alternate_flip=True, **before).fingerprint() != TrainConfig(**before).fingerprint()
    assert TrainConfig(anneal="linear", **before).fingerprint() != TrainConfig(**before).fingerprint()


def test_every_setting_is_either_recipe_or_the_runs_own_so_a_new_one_must_choose():
    # A study stores TrainConfig.recipe(); a setting added later that shapes training but is left out of
    # RECIPE_FIELDS would silently change resumed studies. The run's own carry their tag (train.recipe.OWN).
    from dataclasses import fields
    from train.recipe import OWN, RECIPE_FIELDS, RUNS, SHAPES

    untagged = [f.name for f in fields(TrainConfig) if f.name not in RECIPE_FIELDS and OWN not in f.metadata]
    assert not untagged
    assert not [f.name for f in fields(TrainConfig) if f.name in RECIPE_FIELDS and OWN in f.metadata]
    assert {f.metadata[OWN] for f in fields(TrainConfig) if OWN in f.metadata} == {SHAPES[OWN], RUNS[OWN]}


def test_the_fingerprint_follows_the_tags_a_runs_setting_never_changes_it_a_shaping_one_does():
    from dataclasses import fields
    from train.recipe import OWN, RUNS, SHAPES

    base = TrainConfig()
    for f in fields(TrainConfig):
        if OWN not in f.metadata or f.name == "augment":
            continue
        value = getattr(base, f.name)
        other = (not value if isinstance(value, bool) else value + 1 if isinstance(value, (int, float))
                 else f"{value}-other")
        changed = replace(base, **{f.name: other}).fingerprint() != base.fingerprint()
        assert changed == (f.metadata[OWN] == SHAPES[OWN]), f.name
    assert replace(base, augment=None).fingerprint() != base.fingerprint()


def test_a_recipe_round_trips_and_unknown_names_fail_loudly():
    tuned = TrainConfig(ema_decay=0.9, augment_start=None, augment=AugmentConfig(rotate=5.0))
    rebuilt = TrainConfig(epochs=7).with_recipe(tuned.recipe())
    assert rebuilt.recipe() == tuned.recipe() and rebuilt.augment.rotate == 5.0 and rebuilt.epochs == 7
    assert json.loads(json.dumps(tuned.recipe())) == tuned.recipe()  # plain JSON, for a study's user attrs
    assert TrainConfig(augment=None).with_recipe(tuned.recipe()).augment is None
    with pytest.raises(ValueError, match="unknown recipe settings: augment.hue, lookahead"):
        TrainConfig().with_recipe({**tuned.recipe(), "lookahead": 5, "augment.hue": 0.1})


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_anneal_sets_the_shape_of_the_lr_warm_up_and_decay(anneal):
    model = torch.nn.Linear(3, 3)
    optimizer, scheduler = make_optimizer(model, cfg(lr=1.0, pct_start=0.5, div_factor=10.0, final_div_factor=1.0,
                                                     anneal=anneal), total_steps=10)
    lrs = []  # up over 4 steps, down over 5
    for _ in range(9):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    quarter = lrs[0]  # a quarter of the way up: 0.325 on a straight line, 0.232 on a cosine
    assert quarter == pytest.approx(0.325 if anneal == "linear" else 0.1 + 0.9 * (1 - math.cos(math.pi / 4)) / 2)


def test_a_short_run_with_its_ema_scores_as_well_as_with_raw_weights():
    """Issue 37: 2 epochs on digits (42 steps) gave chance accuracy with the EMA. The cause was BatchNorm's
    running statistics lagging fast-moving weights; a short run (Recipe.bn_refresh_steps) is scored on
    statistics recomputed over the training images."""
    from space import load_spec
    from dataclasses import replace as dc_replace
    data = load_digits32()
    net = dc_replace(load_spec("seed001"), num_classes=10)
    accs = {}
    for name, changes in {"ema": {}, "raw": {"ema_decay": 0.0}, "ema, running stats": {"bn_refresh_steps": 0}}.items():
        result = train(net, cfg(epochs=2, augment=None, eval_every=0, tta=False, **changes), data)
        assert result.epochs == 2
        accs[name] = evaluate(result.model, data.x_test, data.y_test, data.mean, data.std)[1]
    # within training noise of the raw weights (CI's threads gave 0.9333 vs 0.9378), never near chance
    assert accs["ema"] >= accs["raw"] - 0.02 and accs["ema"] > 0.8, accs
    assert accs["ema, running stats"] < accs["ema"] - 0.2, accs  # what the refresh fixes


def test_refreshed_batchnorm_statistics_are_torchs_update_bn_over_the_same_batches():
    from torch.optim.swa_utils import update_bn
    from space import build
    from train.engine import refresh_bn
    from train.loader import DeviceLoader
    data = make_synthetic(96, 8)
    model = build(TINY).eval()
    loader = DeviceLoader(data.x_train, data.y_train, data.mean, data.std, 32, "cpu", train=False, augment=None)
    fresh = refresh_bn(model, loader, torch.device("cpu"), amp=False)
    reference = copy.deepcopy(model)
    update_bn(((x, y) for x, y in loader), reference)
    ours = {k: v for k, v in fresh.state_dict().items() if "running" in k}
    assert len(ours) >= 4 and len(loader) == 3  # several BatchNorms, several batches: the average is tested
    for k, v in ours.items():
        assert torch.allclose(v, reference.state_dict()[k], atol=1e-5), k
    untouched = build(TINY).eval()
    assert all(torch.equal(v, untouched.state_dict()[k]) for k, v in model.state_dict().items() if "running" in k)
