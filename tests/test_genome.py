import dataclasses
import json

import pytest
from hypothesis import given, settings

from space import Genome, GenomeError, Head, Layer, check, get_preset
from strategies import genomes


@settings(max_examples=300, deadline=None)
@given(genomes)
def test_json_round_trip_gives_an_equal_genome(genome):
    text = genome.to_json()
    assert Genome.from_json(text) == genome
    assert hash(Genome.from_json(text)) == hash(genome)
    json.loads(text)  # plain JSON, readable by anything


def test_genome_is_frozen_and_hashable():
    g = get_preset("seed003_net")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'num_classes'"):
        g.num_classes = 3
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'out'"):
        g.blocks[0][0].out = 3
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'append'"):  # lists given in: tuples
        g.blocks[0].append(Layer("conv3", 8))
    assert g == get_preset("seed003_net") and g.num_classes == 10  # nothing changed
    assert len({g, get_preset("seed003_net"), get_preset("seed001")}) == 2


@pytest.mark.parametrize("bad, message", [
    (lambda: Layer("maxpool", 8), "unknown op 'maxpool'"),
    (lambda: Layer("conv3", 8, stride=3), "stride must be 1 or 2"),
    (lambda: Layer("conv1", 8, dilation=2), "cannot be dilated"),
    (lambda: Layer("conv3", 0), "positive integer"),
    (lambda: Head("softmax"), "unknown head"),
    (lambda: Genome([[Layer("conv3", 8)]] * 3), "exactly 4 blocks"),
    (lambda: Genome.from_json("[1, 2]"), "a genome is a JSON object"),
    (lambda: Genome.from_json('{"blocks": [[{"op": "conv3"}]]}'), "malformed genome"),
    (lambda: Genome.from_json("{oops"), "invalid JSON"),
    (lambda: Genome([[Layer("conv3", 8)]] * 4, residual=(True, False)), "residual is 4 booleans"),
    (lambda: Genome.from_dict({**get_preset("seed001").to_dict(), "residual": 1}), "residual is 4 booleans"),
])
def test_invalid_genomes_fail_loudly_with_one_line(bad, message):
    with pytest.raises(GenomeError, match=message) as e:
        bad()
    assert "\n" not in str(e.value)


def _plain(out=8, **kw):
    return Layer("conv3", out, **kw)


def test_check_reports_each_violation_readably():
    g = Genome([[_plain()], [_plain()], [_plain()], [_plain()]])
    assert check(g) == ["RF 9 < 44", "no depthwise-separable conv", "no dilated conv"]
    # 7,424 + 590,336 + 2 * 68,352 + 2,570 parameters; RF 3 + 2 + 16 + 24 = 45
    big = Genome([[_plain(256)], [_plain(256)], [Layer("dsc3", 256, dilation=8)], [Layer("dsc3", 256, dilation=12)]])
    assert check(big) == ["737,034 parameters > 200,000"]
    assert check(big, max_params=10**6) == []


def test_feasible_presets_pass_check():
    for name in ("seed003_net", "seed003_dilated", "seed001"):
        assert check(get_preset(name)) == []


def test_residual_is_left_out_of_json_at_its_default_and_round_trips_otherwise():
    plain = get_preset("seed003_net")
    assert "residual" not in plain.to_dict() and plain.residual == (False,) * 4
    # JSON written before residual blocks existed loads unchanged
    assert Genome.from_json(plain.to_json()) == plain
    res = Genome(plain.blocks, plain.head, residual=(False, True, False, True))
    assert json.loads(res.to_json())["residual"] == [False, True, False, True]
    assert Genome.from_json(res.to_json()) == res and res != plain
    assert "+skip" in res.summary() and "+skip" not in plain.summary()
