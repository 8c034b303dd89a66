"""train.deploy: the ONNX export agrees with PyTorch, int8 keeps the accuracy, bad files are one-line errors,
and the commands that write the ONNX files (train.run --onnx, search.export --onnx, the final retrain)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")  # the deploy extra; ./setup.sh and CI install it
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from space import build  # noqa: E402
from train import deploy as dp  # noqa: E402
from train.data import load_digits32, make_synthetic  # noqa: E402
from train.engine import TrainConfig, predict_images, train  # noqa: E402
from tests.search_helpers import call, one_error_line  # noqa: E402
from tests.test_engine import TINY  # noqa: E402


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """A small net trained 8 epochs on digits (about 0.97 test accuracy: at 4 epochs, about 0.8, so many test
    images sat near a decision boundary and int8 moved the accuracy by up to 5 points either way), its PyTorch
    test accuracy, and its ONNX files (exported once)."""
    data = load_digits32()
    config = TrainConfig(epochs=8, batch_size=64, lr=0.1, device="cpu", progress=False, augment=None, ema_decay=0.0)
    result = train(TINY, config, data)
    logits, labels, _ = predict_images(result.model, data.x_test, data.y_test, data.mean, data.std)
    acc = float((logits.argmax(1) == labels).float().mean())
    out = tmp_path_factory.mktemp("deploy")
    record = dp.deploy(result.model, out / "m.onnx", data, acc, int8_path=out / "m.int8.onnx", log=lambda _: None,
                       seconds=0.2)
    return result.model, data, record, out


def test_exported_logits_agree_with_pytorch_at_any_batch_size(digits_net):
    model, data, record, out = digits_net
    assert record["logit_max_abs_diff"] <= dp.LOGIT_ATOL
    session = dp.onnx_session(out / "m.onnx")
    for n in (1, 7, 300):  # the batch is dynamic
        x = dp.normalize(data.x_test[:n], data.mean, data.std)
        got = session.run(None, {"input": x})[0]
        with torch.no_grad():
            want = model.cpu().eval()(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, want, atol=dp.LOGIT_ATOL, rtol=0)


def test_the_onnx_file_states_its_normalisation(digits_net):
    _, data, _, out = digits_net
    for name in ("m.onnx", "m.int8.onnx"):
        info = dp.read_onnx(out / name)
        np.testing.assert_allclose(info.mean, data.mean, rtol=1e-6)
        np.testing.assert_allclose(info.std, data.std, rtol=1e-6)
        assert info.classes == data.classes
    meta = {p.key: p.value for p in onnx.load(str(out / "m.int8.onnx")).metadata_props}
    assert "per-channel 7-bit weights" in meta["quantization"]
    assert onnx.load(str(out / "m.onnx")).opset_import[0].version >= 18


def test_ort_reproduces_pytorch_accuracy_and_int8_stays_within_a_point(digits_net):
    _, data, record, out = digits_net
    assert record["torch_acc"] > 0.9  # a net worth quantizing (chance: 0.1)
    assert abs(record["fp32"]["test_acc"] - record["torch_acc"]) <= 0.001
    # 8-bit weights on a CPU without VNNI lost 18 points on such a net: what this guards against.
    assert abs(record["int8"]["test_acc"] - record["fp32"]["test_acc"]) <= 0.01
    assert record["int8"]["size_kb"] < record["fp32"]["size_kb"]  # on a net this small, scales and names weigh much
    acc, pred = dp.evaluate_onnx(out / "m.onnx", data.x_test, data.y_test, data.mean, data.std)
    assert acc == record["fp32"]["test_acc"] and len(pred) == len(data.y_test)
    for k in ("fp32", "int8"):
        assert record[k]["latency_ms_b1"] > 0 and record[k]["images_per_s_b256"] > 0
        assert record[k]["cpu"] == dp.cpu_name()


def test_an_export_that_computes_another_net_fails_verification(digits_net):
    model, data, _, out = digits_net
    other = build(TINY)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.head.fc.bias += 0.5  # what a mis-export would do: the same graph, other numbers
    with pytest.raises(dp.DeployError, match="differ from PyTorch's by up to 0.5"):
        dp.verify_onnx(other, out / "m.onnx", data.x_train[:64], data.mean, data.std)


def test_corrupt_and_foreign_onnx_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(dp.DeployError, match="not a readable ONNX model") as e:
        dp.read_onnx(junk)
    assert "\n" not in str(e.value)
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(dp.DeployError, match="not written by tinynas"):
        dp.read_onnx(foreign)
    with pytest.raises(dp.DeployError, match="no such file"):
        dp.read_onnx(tmp_path / "absent.onnx")


def test_calibration_uses_training_images_only():
    x = np.zeros((2000, 2, 2, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(2000) % 256, np.arange(2000) // 256  # each image tells its index
    picked = dp.calibration_images(x, 300, seed=1)
    assert len(picked) == 300 and len(np.unique(picked.reshape(300, -1), axis=0)) == 300  # no image twice
    assert (picked == dp.calibration_images(x, 300, seed=1)).all()  # seeded
    assert len(dp.calibration_images(x[:100], 300)) == 100  # fewer images than wanted: all of them


def test_timing_seconds_come_from_the_environment_and_a_bad_value_is_one_line(monkeypatch):
    monkeypatch.delenv(dp.SECONDS_ENV, raising=False)
    assert dp.timing_seconds() == dp.SECONDS == 2.0
    monkeypatch.setenv(dp.SECONDS_ENV, "0.5")
    assert dp.timing_seconds() == 0.5
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv(dp.SECONDS_ENV, bad)
        with pytest.raises(dp.DeployError, match=f"TINYNAS_ONNX_SECONDS must be a positive number.*{bad}"):
            dp.timing_seconds()


# ------------------------------------------------------------------------------------------ the commands

def test_the_report_shows_the_three_accuracies_sizes_and_speeds(digits_net):
    from search.report import _deploy_section

    _, _, record, _ = digits_net
    text = "\n".join(_deploy_section(record))
    for row, acc in (("PyTorch (fp32)", record["torch_acc"]), ("ONNX fp32", record["fp32"]["test_acc"]),
                     ("ONNX int8", record["int8"]["test_acc"])):
        assert f"| {row} |" in text and f"{acc:.4f}" in text
    assert f"{record['int8']['size_kb']:,.1f}" in text and dp.cpu_name() in text
    assert "No ONNX files: onnx not installed" in "\n".join(_deploy_section({"skipped": "onnx not installed"}))


def test_train_deploy_evaluates_an_onnx_file_it_wrote(digits_net, capsys):
    _, _, record, out = digits_net
    code, stdout, _ = call(dp.main, [str(out / "m.int8.onnx"), "--dataset", "digits", "--json"], capsys, ())
    assert code == 0
    assert json.loads(stdout.strip().splitlines()[-1])["test_acc"] == record["int8"]["test_acc"]


@pytest.mark.parametrize("content, text", [(b"\x08\x07garbage" * 20, "is not a readable ONNX model"),
                                           (None, "was not written by tinynas"), (b"", "is not a readable ONNX")])
def test_train_deploy_refuses_corrupt_or_foreign_files_in_one_line(tmp_path, capsys, content, text):
    from train.data import DataError

    path = tmp_path / "x.onnx"
    if content is None:
        from onnx import TensorProto, helper
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
        onnx.save(helper.make_model(graph), str(path))
    else:
        path.write_bytes(content)
    code, _, err = call(dp.main, [str(path), "--dataset", "digits"], capsys, (dp.DeployError, DataError))
    assert code == 2
    one_error_line(err, text)


def test_train_run_onnx_writes_both_files_and_their_figures(tmp_path, capsys):
    from train import run

    spec = tmp_path / "tiny.json"
    spec.write_text(TINY.to_json())
    code, out, _ = call(run.main, [str(spec), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64",
                                    "--subset", "256", "--onnx", "--quiet", "--out", str(tmp_path),
                                    "--force"], capsys)  # TINY is small on purpose: it breaks the RF rule
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    d = metrics["deploy"]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert d["torch_acc"] == metrics["test_acc"] and abs(d["fp32"]["test_acc"] - metrics["test_acc"]) <= 0.001
    assert "ONNX fp32" in out and "ONNX int8" in out and "ms per image at batch 1" in out


def test_train_run_onnx_without_the_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    from train import run

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    code, _, err = call(run.main, ["seed003_net", "--dataset", "synthetic", "--onnx", "--out", str(tmp_path)], capsys, ())
    assert code == 2
    one_error_line(err, 'onnxruntime (the deploy extra): pip install -e ".[deploy]"')
    assert not tmp_path.joinpath("model.pt").exists()  # refused before training


@pytest.fixture()
def retrained_study(tmp_path):
    """A sqlite study with one (fake-)trained trial, and its 'retrain' in out/: final.json plus the weights of
    a freshly initialised net (the export checks that ONNX computes the same net, trained or not)."""
    import optuna

    from search.loop import Search
    from tests.search_helpers import FakeTrain, final_run, memory_study, settings

    s = settings(max_params=100_000)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = memory_study(s, storage=storage)
    Search(study, s, 10, FakeTrain(epochs=3), 1, log=lambda _: None).run()  # trial 0: seed003_net
    from search.trials import best_trial, genome_of
    trial = best_trial(study.get_trials())
    out = tmp_path / "out"
    out.mkdir()
    torch.save(build(genome_of(trial)).state_dict(), out / "best_model.pt")
    (out / "final.json").write_text(json.dumps({"study": "test", "trial": trial.number, "test_acc": 0.5,
                                                "n_test": 64}))
    return tmp_path / "s.db", out


def _export(argv, capsys):
    from search import export
    from search.cli import ERRORS

    return call(export.main, argv, capsys, ERRORS)


def test_search_export_onnx_of_the_retrained_winner(retrained_study, capsys):
    db, out = retrained_study
    target = out.parent / "w.onnx"
    code, stdout, err = _export(["--storage", str(db), "--study-name", "test", "--out", str(out), "--onnx",
                                 str(target), "--int8"], capsys)
    assert code == 0, err
    assert target.is_file() and target.with_suffix(".int8.onnx").is_file()
    assert "ONNX fp32" in stdout and "ONNX int8" in stdout
    assert dp.read_onnx(target).classes == make_synthetic(8, 8).classes


@pytest.mark.parametrize("damage, text", [
    ("no_final", "has no trained weights"),
    ("other_trial", "has no trained weights"),
    ("corrupt_pt", "is not a readable checkpoint"),
    ("foreign_pt", "does not hold trial 0's weights"),
    ("suffix", "must end in .onnx"),
])
def test_search_export_onnx_errors_are_one_line(retrained_study, capsys, damage, text):
    db, out = retrained_study
    target = out.parent / ("w.txt" if damage == "suffix" else "w.onnx")
    if damage == "no_final":
        (out / "final.json").unlink()
    elif damage == "other_trial":
        (out / "final.json").write_text(json.dumps({"study": "test", "trial": 5, "test_acc": 0.5}))
    elif damage == "corrupt_pt":
        (out / "best_model.pt").write_bytes(b"PK\x03\x04 truncated zip")
    elif damage == "foreign_pt":
        torch.save(build(TINY).state_dict(), out / "best_model.pt")
    code, _, err = _export(["--storage", str(db), "--study-name", "test", "--out", str(out), "--onnx", str(target)],
                           capsys)
    assert code == 2
    one_error_line(err, text)
    if damage == "no_final":
        assert "python -m search.retrain --study-name test --trial 0" in err
    assert not target.exists()


def test_the_final_retrain_without_the_extra_finishes_and_names_it(tmp_path, monkeypatch):
    import search.final as final
    from search.loop import Search
    from tests.search_helpers import FakeTrain, final_run, memory_study, settings

    s = settings(max_params=100_000)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=3), 1, log=lambda _: None).run()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed: importing them fails
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "best_model.onnx").write_bytes(b"an earlier retrain's")
    lines: list[str] = []
    record = final.retrain_best(final_run(study, s, make_synthetic(64, 32), tmp_path, 3, log=lines.append))
    assert record["deploy"] == {"skipped": "onnx, onnxruntime not installed"}
    assert json.loads((tmp_path / "final.json").read_text())["deploy"] == record["deploy"]
    said = [line for line in lines if "ONNX" in line]
    assert said == ['no ONNX files (onnx, onnxruntime not installed): pip install -e ".[deploy]" adds '
                    "best_model.onnx and best_model.int8.onnx"]
    assert not any(tmp_path.glob("*.onnx")) and (tmp_path / "best_model.pt").is_file()
