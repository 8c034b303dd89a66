"""The search space's construction: budget-filling widths, rules met by construction, the final gate."""
import random
import statistics

import optuna
import pytest

from space import Genome, Layer, analyze, check, get_preset, params_from_genome, suggest_genome
from space.searchspace import MAX_WIDTH, RandomTrial


def draw(n, seed=0, **rules):
    rng = random.Random(seed)
    return [suggest_genome(RandomTrial(rng), **rules) for _ in range(n)]


def test_uniform_samples_are_mostly_feasible_fill_the_budget_and_half_are_residual():
    # the acceptance figures (measured on 2,000 samples: see README), on a smaller draw
    genomes = draw(300, seed=1)
    feasible = [g for g in genomes if not check(g)]
    assert len(feasible) >= 0.8 * len(genomes)
    assert statistics.median(analyze(g).params for g in feasible) >= 160_000
    assert 0.3 <= sum(any(g.residual) for g in feasible) / len(feasible) <= 0.7


@pytest.mark.parametrize("max_params, min_rf", [(200_000, 44), (60_000, 44), (400_000, 80)])
def test_construction_meets_the_budget_with_widths_in_multiples_of_8(max_params, min_rf):
    for g in draw(40, seed=max_params, max_params=max_params, min_rf=min_rf):
        params = analyze(g).params
        assert params <= max_params
        assert all(layer.out % 8 == 0 for layer in g.layers)
        capped = any(layer.out == MAX_WIDTH for layer in g.layers)
        assert params >= 0.6 * max_params or capped, (params, g.summary())


def test_construction_raises_dilations_to_reach_the_receptive_field():
    for min_rf in (44, 100):
        for g in draw(40, seed=min_rf, min_rf=min_rf):
            # a shape that cannot reach it has every body layer at the highest dilation
            assert analyze(g).rf >= min_rf or max(l.dilation for l in g.layers) == 8
            assert any(l.dilated for l in g.layers) and any(l.separable for l in g.layers)


def test_the_same_trial_parameters_give_the_same_genome():
    a, b = RandomTrial(random.Random(5)), RandomTrial(random.Random(5))
    assert suggest_genome(a) == suggest_genome(b) and a.params == b.params


def test_tpe_sees_a_fixed_unconditional_parameter_space():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    names = []
    for _ in range(6):
        trial = study.ask()
        g = suggest_genome(trial, max_params=100_000)
        names.append(sorted(trial.params))
        study.tell(trial, analyze(g).params / 100_000)
    assert all(n == names[0] for n in names) and len(names[0]) == 26
    assert {"budget", "residual", "c1_skip", "c4_rel"} <= set(names[0])


def test_presets_map_to_a_point_of_the_space():
    params = params_from_genome(get_preset("seed003_dilated"))
    trial = optuna.trial.FixedTrial(params)
    assert isinstance(suggest_genome(trial), Genome)
    assert params["budget"] == 99 and params["residual"] == "off"  # 197,858 of 200,000


def test_an_infeasible_user_genome_is_still_refused_with_its_reason():
    wide = [[Layer("conv3", 128)], [Layer("conv3", 128)], [Layer("dsc3", 128, dilation=4)], [Layer("conv3", 128)]]
    g = Genome(wide, residual=(True, True, True, True))
    # 3,712 + 147,712 + 17,792 + 147,712 (layers) + 640 (C1's 3 -> 128 projection; the others are identities)
    # + 1,290 (head); RF 3 + 2 + 8 + 2
    assert check(g) == ["318,858 parameters > 200,000", "RF 15 < 44"]
    assert check(g, max_params=10**6, min_rf=15) == []
