"""Latency tables (train.latency, space.latency): the build command at its tiny size, its bad inputs, the
prediction in space.describe, and a digits search under a latency budget."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.lifecycle import classify, rejected_reason
from search.study import stored_settings
from space import Rules, check, constraint_values
from space.analysis import analyze
from space.latency import BIG_SIZE, LatencyError, LatencyTable, load_table, overhead_features, predict_latency
from space.sample import sample_genomes
from train.deploy import missing
from train.latency import CALIBRATION_SMALL, QUICK, Runner, calibration_genomes
from tests.search_helpers import run_main

pytestmark = pytest.mark.skipif(bool(missing()), reason="needs the deploy extra (onnx, onnxruntime, onnxscript)")

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
DIGITS = ["--dataset", "digits", "--subset-train", "200", "--subset-test", "50", "--trial-epochs", "1",
          "--batch-size", "32", "--max-params", "100000", "--no-final", "--no-presets"]


def cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_error(r: subprocess.CompletedProcess, *parts: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latency") / "fp32.json"
    r = cli(out.parent, "train.latency", "build", "--runtime", "onnxruntime-fp32", "--threads", "1", "--quick",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "blocks" in r.stderr and "measured" in r.stderr and "whole nets 3/3 measured" in r.stderr  # progress
    return out


def test_build_writes_a_table_with_its_target_and_positive_figures(table_path):
    data = json.loads(table_path.read_text())
    assert (data["runtime"], data["threads"], data["batch"]) == ("onnxruntime-fp32", 1, 1)
    assert data["machine"]["cpu"] and data["versions"]["onnxruntime"] and data["versions"]["torch"]
    assert {"conv3/s1/d1/32", "conv3/s2/d1/16", "dw3/s1/d4/16", "pw/8", "proj/s2/32", "add/4", "head/4"} <= set(
        data["entries"])
    values = [v for e in data["entries"].values() for row in e["ms"] for v in (row if isinstance(row, list) else [row])
              if v is not None]
    assert values and min(values) > 0
    # QUICK: 2 nets under the default rules and 1 under the small nets' cap
    assert len(data["calibration"]["measured_ms"]) == 3 and min(data["calibration"]["measured_ms"]) > 0
    assert data["calibration"]["small"] == {"seed": CALIBRATION_SMALL[0], "max_macs": CALIBRATION_SMALL[1]}
    assert data["overhead"]["fixed_ms"] >= 0  # a cost, never negative (a --quick table's blocks may read high)
    assert data["channel_step"][""] in (8, 16, 32) and len(data["channel_probe"]["blocks"]["conv3"]) == 5
    table = load_table(table_path, runtime="onnxruntime-fp32")
    g = next(sample_genomes(1, seed=3))
    p = predict_latency(g, table)
    assert p.ms > 0 and abs(p.ms - p.fixed_ms - sum(l.ms for l in p.layers)) < 1e-9
    assert [l.name for l in p.layers if not l.name.endswith("skip")][:-1] == [i.name for i in analyze(g).layers]


def test_describe_shows_the_predicted_ms_per_layer(table_path, tmp_path):
    r = cli(tmp_path, "space.describe", "seed003_net", "--latency-table", str(table_path))
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if line.startswith("layer"))
    assert header.split()[-1] == "ms"
    assert "predicted latency:" in r.stdout and "onnxruntime-fp32" in r.stdout


def test_a_budget_rejects_by_the_prediction_and_feeds_the_constraints(table_path):
    table = load_table(table_path)
    genomes = [g for g in sample_genomes(60, seed=5) if not check(g)]
    ms = sorted(predict_latency(g, table).ms for g in genomes)
    budget = statistics.median(ms)
    rules = Rules(max_latency_ms=budget, latency=table)
    for g in genomes:
        slow = predict_latency(g, table).ms > budget
        assert any("predicted" in v and "ms >" in v for v in check(g, rules)) == slow
        assert (constraint_values(g, rules)["latency"] > 0) == slow


def test_bad_tables_are_one_clear_error(table_path, tmp_path):
    with pytest.raises(LatencyError, match="no such latency table"):
        load_table(tmp_path / "absent.json")
    (tmp_path / "corrupt.json").write_text('{"format": "tinynas-latency-table", "vers')
    with pytest.raises(LatencyError, match="invalid JSON"):
        load_table(tmp_path / "corrupt.json")
    (tmp_path / "genome.json").write_text(next(sample_genomes(1)).to_json())
    with pytest.raises(LatencyError, match="not a latency table"):
        load_table(tmp_path / "genome.json")
    with pytest.raises(LatencyError, match="measured with onnxruntime-fp32, not onnxruntime-int8"):
        load_table(table_path, runtime="onnxruntime-int8")
    data = json.loads(table_path.read_text())
    (tmp_path / "later.json").write_text(json.dumps({**data, "blocks_version": 99}))
    with pytest.raises(LatencyError, match="rebuild it"):
        load_table(tmp_path / "later.json")
    (tmp_path / "broken.json").write_text(json.dumps({**data, "entries": {}}))
    with pytest.raises(LatencyError, match="corrupt latency table"):
        load_table(tmp_path / "broken.json")


def test_bad_build_and_search_inputs_exit_2_and_write_nothing(table_path, tmp_path):
    one_error(cli(tmp_path, "train.latency", "build", "--runtime", "tflite", "-o", "t.json"), "unknown --runtime")
    assert not (tmp_path / "t.json").exists()
    (tmp_path / "genome.json").write_text(next(sample_genomes(1)).to_json())
    one_error(run_main("search.run", *DIGITS, "--latency-table", "genome.json", "--max-latency-ms", "5", cwd=tmp_path),
              "not a latency table")
    one_error(run_main("search.run", *DIGITS, "--max-latency-ms", "5", cwd=tmp_path), "need --latency-table")
    one_error(run_main("search.run", *DIGITS, "--latency-table", str(table_path), "--max-latency-ms", "1e-6",
                       cwd=tmp_path), "no genome of the search space meets", "--max-latency-ms 1e-06",
              "lowest predicted latency")
    assert not (tmp_path / "results").exists()


def test_digits_search_rejects_over_budget_before_training_and_keeps_the_table_on_resume(table_path, tmp_path):
    table = load_table(table_path)
    rules = Rules(max_params=100_000)
    ms = sorted(predict_latency(g, table).ms for g in sample_genomes(200, seed=11, rules=rules) if not check(g, rules))
    budget = round(ms[len(ms) // 3], 4)  # about two thirds of the space is over it
    r = run_main("search.run", *DIGITS, "--trials", "3", "--study-name", "lat", "--latency-table", str(table_path),
                 "--max-latency-ms", str(budget), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{tmp_path / 'results' / 'lat.db'}")
    trials = study.get_trials()
    trained = [t for t in trials if classify(t) in ("completed", "pruned")]
    rejected = [t for t in trials if "predicted" in (rejected_reason(t) or "")]
    assert len(trained) == 3 and rejected, [t.user_attrs.get("rejected_reason") for t in trials]
    assert all(t.user_attrs["latency_ms"] <= budget for t in trained)
    assert all(t.user_attrs["latency_ms"] > budget and "epochs" not in t.user_attrs for t in rejected)
    assert all(f"> {budget:g} ms" in rejected_reason(t) for t in rejected)
    # Resumed without the flags: the stored table and budget are kept.
    r = run_main("search.run", *DIGITS, "--trials", "4", "--study-name", "lat", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{tmp_path / 'results' / 'lat.db'}")
    s = stored_settings(study)
    assert s.latency_table == table and s.max_latency_ms == budget
    trained = [t for t in study.get_trials() if classify(t) in ("completed", "pruned")]
    assert len(trained) == 4 and all(t.user_attrs["latency_ms"] <= budget for t in trained)


def test_accuracy_latency_objective_tells_the_predicted_ms_and_the_settings_round_trip(table_path):
    from search.loop import Search
    from search.settings import SearchSettings
    from search.trials import leaderboard, pareto_trials
    from tests.search_helpers import FakeTrain, memory_study, settings

    table = load_table(table_path)
    s = settings(objectives="accuracy,latency", latency_table=table)
    study = memory_study(s)
    Search(study, s, 10, FakeTrain(epochs=1), 4, log=lambda line: None).run()
    done = [t for t in study.get_trials() if classify(t) == "completed"]
    assert done and all(t.values[1] == pytest.approx(t.user_attrs["latency_ms"], abs=1e-4) for t in done)
    assert pareto_trials(study.get_trials()) and leaderboard(study).latency_ms.notna().any()
    again = SearchSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.latency_table == table and again.rules.latency == table


def test_the_winners_measured_latency_is_compared_only_on_the_tables_machine(table_path):
    from search.final import latency_check
    from space.latency import LatencyTable

    table = load_table(table_path)
    g = next(sample_genomes(1, seed=3))
    deploy = {"fp32": {"threads": 1, "latency_ms_b1": 2.0}, "onnxruntime": table.data["versions"]["onnxruntime"]}
    here = latency_check(table, g, deploy, log=lambda line: None)
    predicted = predict_latency(g, table).ms
    assert here["same_machine"] and here["measured_ms"] == 2.0
    assert here["error_pct"] == pytest.approx((predicted - 2.0) / 2.0 * 100, abs=0.06)
    elsewhere = LatencyTable({**table.data, "machine": {**table.data["machine"], "cpu": "Cortex-A72 (a Pi)"}})
    lines: list[str] = []
    there = latency_check(elsewhere, g, deploy, log=lines.append)
    assert not there["same_machine"] and there["error_pct"] is None and there["predicted_ms"] > 0
    assert "another machine" in lines[0]
    older = {**deploy, "onnxruntime": "0.0.1"}  # same CPU, another runtime version: not comparable either
    assert latency_check(table, g, older, log=lambda line: None)["error_pct"] is None


def test_widths_inside_a_grid_cell_are_rounded_up_to_the_runtimes_channel_step():
    from space.latency import LatencyTable

    cell = {"cin": [3, 64, 96], "cout": [64, 96], "ms": [[0.5, 0.75], [1.0, 1.5], [1.5, 2.0]]}
    table = LatencyTable({"entries": {"pw/16": cell, "fallback/pw/16": cell},
                          "channel_step": {"": 16, "fallback/": 8}})
    assert table.lookup("pw/16", 72, 72) == (1.5, True)  # computed as 80 x 80: the middle of the cell
    assert table.lookup("fallback/pw/16", 72, 72) == (1.25, True)  # step 8: 72 is itself
    assert table.lookup("pw/16", 64, 96) == (1.5, True) and table.lookup("pw/16", 3, 64) == (0.5, True)
    assert table.lookup("pw/16", 90, 90)[0] == 2.0  # 96 at most: rounding stays inside the cell


@pytest.mark.parametrize("int8", [False, True])
def test_every_block_the_prediction_looks_up_is_a_block_the_build_measures(int8):
    """The build names its entries and the prediction looks them up with one function (block_key): every key a
    feasible net is predicted from is one the build writes, fallback blocks included."""
    from space import DEFAULT_MAX_PARAMS
    from space.latency import block_key, block_keys
    from train.latency import WIDTHS, block_specs

    built = block_specs(WIDTHS, DEFAULT_MAX_PARAMS, int8)
    rules = Rules()
    looked_up = {k for g in sample_genomes(200, seed=5, rules=rules) if not check(g, rules)
                 for _, parts, _ in block_keys(g, int8) for k, _, _ in parts}
    assert looked_up and looked_up <= set(built)
    assert any(k.startswith("fallback/") for k in looked_up) == int8
    for key, spec in built.items():  # the build's keys are block_key's, from the axes it measures
        plain = block_key(spec["kind"], spec["size"], spec["stride"], spec["dilation"])
        assert key == ("fallback/" + plain if spec.get("fallback") else plain)
    assert (block_key("conv3", 16, 2, 1), block_key("proj", 32, 2), block_key("head", 4)) == (
        "conv3/s2/d1/16", "proj/s2/32", "head/4")  # the layout the module docstring gives
    with pytest.raises(ValueError, match="unknown block kind 'maxpool'"):
        block_key("maxpool", 8)


class _PaddingRunner:
    """Times a conv as if the runtime computed `step` channels at a time (work ~ padded cin x cout)."""

    def __init__(self, step: int):
        self.step = step

    def time_many(self, modules, inputs) -> list[float]:
        return [0.01 + 1e-5 * (-(-x.shape[1] // self.step) * self.step) ** 2 for x in inputs]


@pytest.mark.parametrize("step", [8, 16, 32])
def test_the_build_finds_the_channel_step_the_runtime_computes_in(step):
    from train.latency import STEP_PROBE, channel_step

    found, probe = channel_step(_PaddingRunner(step))
    assert found == step and set(probe) == {"conv3", "pw"} and len(probe["pw"]) == len(STEP_PROBE)


def _slower(factor: float):
    """A faked runtime `factor` times slower than where the table was built: measure_reference's stand-in."""
    return lambda reference, runtime, threads: [item["ms"] * factor for item in reference["items"]]


def test_the_build_stores_a_reference_that_this_machine_reruns_within_the_tolerance(table_path):
    from space.machine import TOLERANCE, check_machine

    table = load_table(table_path)
    items = table.data["reference"]["items"]
    assert len(items) == 4 and all(i["ms"] > 0 and i["onnx"] for i in items)  # fp32: no fallback block
    check = check_machine(table)  # the real runtime, the same machine: about 1
    assert check.status == "same" and abs(check.ratio - 1) <= TOLERANCE and check.warning() is None


def test_the_build_rechecks_its_reference_and_keeps_each_blocks_median(table_path):
    ref = json.loads(table_path.read_text())["reference"]
    checks = ref["checks"]
    assert checks[0] == {"at": "start", "ratio": 1.0} and checks[-1]["at"] == "the end"
    assert any(c["at"].startswith("blocks ") for c in checks) and all(c["ratio"] > 0 for c in checks)
    assert ref["steady"] is None  # --quick records the spread and never refuses (its figures are rough)


def _drifting(later: float, calls: list):
    """measure_reference's stand-in for a machine whose speed moves: 1x at the build's first timing, then
    `later` times the stored figures (each call counted in `calls`)."""
    def measure(reference, runtime, threads):
        calls.append(len(calls))
        return [item.get("ms", 0.1) * (1.0 if len(calls) == 1 else later) for item in reference["items"]]
    return measure


def test_a_build_whose_machine_changes_speed_stops_and_writes_nothing(tmp_path, monkeypatch):
    """The reference runs 1.3x slower after the build's first timing (a machine whose speed moved, as this
    project's VM did by 2x between runs): the build stops with the ratio and where, and writes no table; at
    1.05x (within STEADY) it writes its table and keeps the checks."""
    import train.latency as tl

    monkeypatch.setattr(tl, "QUICK", tl.Timing(1, 1, 2, 0.0, (8, 32), nets=2, small_nets=1, steady=tl.STEADY))
    out, calls = tmp_path / "t.json", []
    monkeypatch.setattr(tl, "measure_reference", _drifting(1.3, calls))
    with pytest.raises(LatencyError, match=r"speed moved .* 1\.00x \(at start\) to 1\.30x \(at blocks"):
        tl.main(["build", "--runtime", "onnxruntime-fp32", "--quick", "-o", str(out)])
    assert not out.exists() and not out.with_suffix(".tmp").exists() and len(calls) == 2  # stopped at once
    monkeypatch.setattr(tl, "measure_reference", _drifting(1.05, []))
    assert tl.main(["build", "--runtime", "onnxruntime-fp32", "--quick", "-o", str(out)]) == 0
    ratios = [c["ratio"] for c in json.loads(out.read_text())["reference"]["checks"]]
    assert ratios[0] == 1.0 and max(ratios) == pytest.approx(1.05, abs=1e-3) and len(ratios) >= 3


def test_a_slower_machine_of_the_same_name_gives_one_warning_with_the_ratio(table_path, monkeypatch, capsys):
    from space import describe
    from space import machine

    monkeypatch.setattr(machine, "measure_reference", _slower(2.0))
    assert describe.main(["seed003_net", "--latency-table", str(table_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "2.00x" in err[0] and "--latency-rescale" in err[0]
    monkeypatch.setattr(machine, "measure_reference", _slower(1.1))  # within 15 %: nothing said
    assert describe.main(["seed003_net", "--latency-table", str(table_path)]) == 0
    assert capsys.readouterr().err == ""


def test_latency_rescale_scales_every_prediction_by_the_measured_ratio(table_path, monkeypatch, capsys):
    from space import machine

    table = load_table(table_path)
    monkeypatch.setattr(machine, "measure_reference", _slower(0.5))
    scaled, check = machine.checked_table(table, rescale=True, say=lambda line: None)
    g = next(sample_genomes(1, seed=3))
    assert scaled.scale == pytest.approx(0.5, abs=1e-3) and check.comparable
    assert predict_latency(g, scaled).ms == pytest.approx(predict_latency(g, table).ms * 0.5, rel=1e-3)
    assert scaled.base_digest == table.base_digest and scaled != table  # the study stores the rescale
    # the rescaled table, re-checked on the machine it was rescaled for, now passes
    assert machine.check_machine(scaled).status == "same"


def test_latency_rescale_without_a_reference_is_one_error_line(table_path, tmp_path):
    data = json.loads(table_path.read_text())
    del data["reference"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    r = cli(Path.cwd(), "space.describe", "seed003_net", "--latency-table", str(old), "--latency-rescale")
    one_error(r, "--latency-rescale", "no reference")
    r = cli(Path.cwd(), "space.describe", "seed003_net", "--latency-table", str(old))  # no rescale: a warning, then on
    assert r.returncode == 0 and r.stderr.startswith("warning: ") and len(r.stderr.strip().splitlines()) == 1
    assert "cannot be checked" in r.stderr and "predicted latency" in r.stdout


def test_the_final_report_does_not_present_a_2x_miss_as_a_prediction_check(table_path, monkeypatch):
    from search.final import latency_check
    from search.report import _latency_section
    from space import machine

    table = load_table(table_path)
    g = next(sample_genomes(1, seed=3))
    predicted = predict_latency(g, table).ms
    deploy = {"fp32": {"threads": 1, "latency_ms_b1": round(predicted / 2, 4)},
              "onnxruntime": table.data["versions"]["onnxruntime"]}
    monkeypatch.setattr(machine, "measure_reference", _slower(0.5))  # this machine runs twice as fast
    lines: list[str] = []
    record = latency_check(table, g, deploy, log=lines.append)
    assert record["same_machine"] and record["error_pct"] is None and record["machine_check"]["status"] == "differs"
    assert lines[0].startswith("warning: ") and "0.50x" in lines[0]
    text = " ".join(_latency_section(record))
    assert "not comparable" in text and "0.50x" in text and "%)" not in text
    monkeypatch.setattr(machine, "measure_reference", _slower(1.0))
    same = latency_check(table, g, deploy, log=lambda line: None)
    assert same["error_pct"] == pytest.approx(100.0, abs=0.1) and "not comparable" not in _latency_section(same)[0]


def test_a_resume_keeps_the_studys_rescale_though_the_ratio_is_measured_again(table_path, monkeypatch):
    from search.settings import resolve_settings
    from space import machine

    table = load_table(table_path)
    monkeypatch.setattr(machine, "measure_reference", _slower(0.5))
    begun, _ = machine.checked_table(table, rescale=True, say=lambda line: None)
    stored, _ = resolve_settings({"dataset": "digits", "latency_table": begun})
    monkeypatch.setattr(machine, "measure_reference", _slower(0.52))  # the same machine, measured again
    again, _ = machine.checked_table(table, rescale=True, say=lambda line: None)
    resumed, _ = resolve_settings({"dataset": "digits", "latency_table": again}, stored)
    assert again != begun and resumed.latency_table == begun and not resumed.differing(stored)
    plain, _ = resolve_settings({"dataset": "digits", "latency_table": table}, stored)  # resumed without the flag
    assert plain.latency_table == begun
    unscaled, _ = resolve_settings({"dataset": "digits", "latency_table": table})
    late, _ = resolve_settings({"dataset": "digits", "latency_table": begun}, unscaled)  # a rescale asked late
    assert late.differing(unscaled) == ["latency_table"]


def test_int8_depthwise_widths_that_are_odd_multiples_of_8_interpolate_among_their_own_class():
    from space.latency import ODD8, LatencyTable

    # ONNX Runtime 1.32's int8 depthwise conv at 32x32 (ms, measured on this project's VM): 72 channels cost
    # twice 64's and more than 80's; the grid holds both classes
    entry = {"cin": [8, 16, 24, 32, 40, 64, 72, 96, 104], ODD8: True,
             "ms": [0.008, 0.010, 0.016, 0.020, 0.030, 0.037, 0.073, 0.055, 0.106]}
    table = LatencyTable({"entries": {"dw3/s1/d4/32": entry}, "channel_step": {"": 8}})
    assert table.lookup("dw3/s1/d4/32", 72) == (0.073, True)
    assert table.lookup("dw3/s1/d4/32", 88)[0] == pytest.approx((0.073 + 0.106) / 2)  # between 72 and 104
    assert table.lookup("dw3/s1/d4/32", 80)[0] == pytest.approx(0.037 + (0.055 - 0.037) / 2)  # between 64 and 96
    plain = LatencyTable({"entries": {"dw3/s1/d4/32": {k: v for k, v in entry.items() if k != ODD8}},
                          "channel_step": {"": 8}})
    assert plain.lookup("dw3/s1/d4/32", 80)[0] == pytest.approx(0.073 + (0.055 - 0.073) / 3)  # 72 misleads 80


def test_an_int8_build_grids_depthwise_convs_at_both_classes_of_width():
    from space.latency import ODD8
    from train.latency import block_specs

    int8, fp32 = block_specs((8, 16, 32, 64), 200_000, int8=True), block_specs((8, 16, 32, 64), 200_000)
    assert int8["dw3/s1/d4/32"]["cin"] == [8, 16, 24, 32, 40, 64, 72] and int8["dw3/s1/d4/32"][ODD8]
    assert fp32["dw3/s1/d4/32"]["cin"] == [8, 16, 32, 64] and ODD8 not in fp32["dw3/s1/d4/32"]


def test_the_overhead_is_calibrated_on_small_nets_under_the_cap_as_well_as_on_default_rule_nets():
    # round 1 of issue 47: fitted on default-rule nets alone, the fp32 table over-predicted nets under a 20 M
    # MACs cap by a median 7.1 %
    default = calibration_genomes(4)
    both = calibration_genomes(4, small=3)
    assert [g.to_json() for g in both[:4]] == [g.to_json() for g in default]  # the default-rule nets unchanged
    small = both[4:]
    assert len(small) == 3 and len({g.to_json() for g in both}) == 7
    assert all(analyze(g).macs <= CALIBRATION_SMALL[1] and not check(g, Rules(max_macs=CALIBRATION_SMALL[1]))
               for g in small)
    assert max(analyze(g).macs for g in default) > CALIBRATION_SMALL[1]  # the cap is what makes them small
    tight = calibration_genomes(0, Rules(max_macs=5_000_000), small=2)  # a tighter cap of the rules is kept
    assert len(tight) == 2 and all(analyze(g).macs <= 5_000_000 for g in tight)


def test_a_calibration_net_reads_its_fastest_pass_so_one_slow_reading_does_not_skew_the_fit(tmp_path, monkeypatch):
    # round 1 of issue 47: 3 of 50 nets read ~1.5x their time in their one measurement, steady on re-measuring
    runner = Runner("onnxruntime-fp32", 1, QUICK, tmp_path)
    nets = calibration_genomes(2)
    times = iter([0.30, 0.10, 0.20, 0.25])  # pass 1: net0, net1; pass 2: net0, net1 (ms)
    monkeypatch.setattr(Runner, "_net", lambda self, g, stem: tmp_path / f"{stem}.onnx")
    monkeypatch.setattr(Runner, "_time_onnx", lambda self, path, x: next(times))
    assert runner.time_nets(nets, passes=2) == [0.20, 0.10]
    times = iter([0.30, 0.10])
    assert runner.time_nets(nets) == [0.30, 0.10]  # one pass: what it read


def test_elements_written_at_32x32_carry_their_own_per_element_term(table_path):
    # one per-element coefficient biased small nets (most elements at 32x32) and default-rule nets (most at
    # 16x16 and below) in opposite directions (issue 47); a table fitted before the term predicts as it did
    g = next(x for x in sample_genomes(50, seed=5) if {i.size for i in analyze(x).layers} > {BIG_SIZE})
    a = analyze(g)
    sizes = {**{i.name: i.size for i in a.layers}, **{s.name: s.size for s in a.shortcuts}}
    feats = {name: f for name, _, f in overhead_features(g, int8=False)}
    big = sum(f[4] for f in feats.values())
    assert big == sum(f[3] for name, f in feats.items() if sizes.get(name) == BIG_SIZE)
    assert 0 < big < sum(f[3] for f in feats.values())
    data = json.loads(table_path.read_text())
    old = {k: v for k, v in data["overhead"].items() if k != "per_kelem32_ms"}
    before = predict_latency(g, LatencyTable({**data, "overhead": old})).ms
    assert predict_latency(g, LatencyTable({**data, "overhead": {**old, "per_kelem32_ms": 0.0}})).ms == before
    after = predict_latency(g, LatencyTable({**data, "overhead": {**old, "per_kelem32_ms": 0.001}})).ms
    assert after == pytest.approx(before + 0.001 * big)
