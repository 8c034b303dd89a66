import pytest

from space import PRESETS, analyze, build

# Published in ../shared/seeds (003: "Net" and "NetDilated" torchinfo summaries; 001: torch summary).
PUBLISHED = {"seed003_net": (84_322, 55), "seed003_dilated": (197_858, 45), "seed001": (155_434, 79)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_published_parameters_and_rf(name):
    params, rf = PUBLISHED[name]
    genome = PRESETS[name]
    assert analyze(genome).params == params
    assert sum(p.numel() for p in build(genome).parameters()) == params
    assert analyze(genome).rf == rf


def test_seed003_net_layer_table_matches_the_seed_document():
    # the seed's RF table, layer by layer (RF_out and jump_out of each conv layer, dw/pw merged)
    a = analyze(PRESETS["seed003_net"])
    assert [(i.rf, i.jump) for i in a.layers] == [(3, 1), (5, 1), (7, 2), (11, 2), (15, 4), (15, 4), (23, 8),
                                                  (55, 8), (55, 8)]
    assert a.macs == 13_728_256  # torchinfo reported 13.73 M mult-adds


def test_seed003_dilated_keeps_full_resolution():
    assert {i.size for i in analyze(PRESETS["seed003_dilated"]).layers} == {32}
