import json
import subprocess
import sys

import pytest

from space import Genome, analyze, check
from tests.search_helpers import run_main


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_describe_prints_table_and_totals():
    r = run("space.describe", "seed003_net")
    assert r.returncode == 0
    assert "84,322 parameters" in r.stdout and "RF 55" in r.stdout and "c4.0" in r.stdout


def test_describe_json_has_the_scriptable_keys():
    d = json.loads(run("space.describe", "seed001", "--json").stdout.strip().splitlines()[-1])
    assert (d["params"], d["rf"], d["violations"]) == (155_434, 79, [])
    assert d["macs"] > 0 and Genome.from_dict(d["genome"]).head.kind == "conv1x1"


def test_sample_is_reproducible_and_each_line_is_a_spec(tmp_path):
    a = run_main("space.sample", "--n", "20", "--seed", "3").stdout.splitlines()
    assert a == run_main("space.sample", "--n", "20", "--seed", "3").stdout.splitlines()
    assert a != run_main("space.sample", "--n", "20", "--seed", "4").stdout.splitlines()
    assert len(a) == 20
    spec = tmp_path / "g.json"
    spec.write_text(a[0])
    d = json.loads(run("space.describe", str(spec), "--json").stdout)
    g = Genome.from_json(a[0])
    assert d["params"] == analyze(g).params and d["violations"] == check(g)
    assert d["peak_activations"] == analyze(g).peak_activations


def test_export_writes_loadable_code(tmp_path):
    import importlib.util

    import torch

    from space import get_preset
    out = tmp_path / "m.py"
    assert run("space.export", "seed003_dilated", "-o", str(out)).returncode == 0
    spec = importlib.util.spec_from_file_location("exported", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the file alone, torch its only import
    net = module.Net()
    assert sum(p.numel() for p in net.parameters()) == analyze(get_preset("seed003_dilated")).params
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("spec, text", [("no_such_preset", "neither a preset"), ("{bad json", "invalid JSON"),
                                        ("missing.json", "cannot read")])
def test_bad_spec_gives_one_line_and_exit_2(spec, text):
    r = run_main("space.describe", spec)
    assert r.returncode == 2
    assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_describe_lists_the_shortcuts_of_a_residual_genome():
    spec = ('{"blocks": [[{"op": "conv3", "out": 16}], [{"op": "dsc3", "out": 24, "stride": 2}], '
            '[{"op": "dsc3", "out": 24, "dilation": 4}], [{"op": "conv3", "out": 32}]], "residual": [false, true, true, false]}')
    r = run_main("space.describe", spec)
    assert r.returncode == 0 and "c2.skip" in r.stdout and "+projection" in r.stdout and "+identity" in r.stdout
    d = json.loads(run("space.describe", spec, "--json").stdout)
    # 464 + 576 + 840 + 6,976 (layers) + 432 (C2's 16 -> 24 projection: 384 + 48) + 330 (head)
    assert [s["kind"] for s in d["shortcuts"]] == ["projection", "identity"] and d["params"] == 9_618


def test_sample_fills_the_given_budget():
    lines = run("space.sample", "--n", "5", "--seed", "0", "--max-params", "50000").stdout.splitlines()
    assert len(lines) == 5 and all(analyze(Genome.from_json(l)).params <= 50_000 for l in lines)
    assert run_main("space.sample", "--max-params", "0").returncode == 2
