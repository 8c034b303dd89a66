"""Zero-cost proxies (train.proxies): deterministic, run on every kind of genome the space produces, leave the
caller's model alone, and never drop a candidate; the vote ranks by the proxies' ranks."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn as nn

from space import PRESETS, RandomTrial, build, suggest_genome
from train.data import make_synthetic
from train.proxies import PROXIES, VOTE, get_proxy, proxy_batch, rank_vote, ranks, score

N_IMAGES = 8  # a small batch keeps each proxy well under a second on one CPU thread


@pytest.fixture(scope="module")
def batch():
    return proxy_batch(make_synthetic(), N_IMAGES, seed=0)


def genomes(residual: bool, n: int = 1, seed: int = 0):
    """The first n genomes of a seeded uniform draw of the space with (or without) a residual add."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        g = suggest_genome(RandomTrial(rng))
        if any(g.residual) == residual:
            out.append(g)
    return out


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_every_proxy_gives_a_finite_value_on_genomes_of_the_space(batch, residual):
    x, y = batch
    g = genomes(residual)[0]
    shortcuts = {g.shortcut(b) for b in range(4)} - {None}
    assert shortcuts == ({"identity", "projection"} if residual else set())  # both kinds of skip connection
    values = score(build(g, seed=0), x, y, list(PROXIES))
    assert list(values) == list(PROXIES)
    assert all(math.isfinite(v) for v in values.values()), values
    assert values["params"] == sum(p.numel() for p in build(g).parameters())
    assert values["synflow"] > 0 and values["grad_norm"] > 0 and values["jacov"] <= 0


def test_proxies_are_deterministic_for_a_seed_and_leave_the_rng_alone(batch):
    x, y = batch
    model = build(genomes(True)[0], seed=1)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = score(model, x, y, list(PROXIES), seed=5)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG stream is where it was
    again = score(model, x, y, list(PROXIES), seed=5)
    assert first == again
    # The same genome built with the same seed scores the same: what the search's prescreen relies on.
    assert score(build(genomes(True)[0], seed=1), x, y, list(PROXIES), seed=5) == first


def test_a_proxy_does_not_change_the_callers_model(batch):
    x, y = batch
    model = build(PRESETS["seed001"], seed=0)  # dropout-free preset with BN everywhere
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}  # weights and BN running statistics
    for name in PROXIES:
        get_proxy(name)(model, x, y)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_an_unknown_proxy_name_fails_with_the_list(batch):
    x, y = batch
    with pytest.raises(ValueError, match="unknown proxy 'snip'; choose one of: synflow, jacov, naswot, grad_norm"):
        score(build(PRESETS["seed003_net"]), x, y, ["synflow", "snip"])
    assert set(VOTE) <= set(PROXIES)


def test_ranks_put_the_highest_first_share_ties_and_put_non_finite_values_last():
    assert ranks([3.0, 1.0, 2.0]) == [1.0, 3.0, 2.0]
    assert ranks([5.0, 5.0, 1.0]) == [1.5, 1.5, 3.0]
    assert ranks([float("nan"), 2.0, float("inf"), -1.0]) == [3.5, 1.0, 3.5, 2.0]


def test_the_vote_ranks_candidates_by_their_mean_rank_over_the_proxies():
    table = [  # hand-made: A is best on two proxies, C on one; the scales differ by orders of magnitude
        {"synflow": 1e12, "naswot": 700.0, "grad_norm": 0.5},  # A: ranks 1, 1, 3
        {"synflow": 1e10, "naswot": 650.0, "grad_norm": 2.0},  # B: ranks 3, 2, 2
        {"synflow": 1e11, "naswot": 600.0, "grad_norm": 9.0},  # C: ranks 2, 3, 1
    ]
    votes = rank_vote(table)
    assert votes == pytest.approx([3 - 5 / 3, 3 - 7 / 3, 3 - 2])  # n - mean rank
    assert max(range(3), key=votes.__getitem__) == 0
    assert rank_vote(table, names=["grad_norm"]) == [0.0, 1.0, 2.0]  # one proxy: its own order


def test_a_non_finite_proxy_value_never_removes_a_candidate():
    nan, inf = float("nan"), float("inf")
    table = [{"synflow": nan, "naswot": 3.0}, {"synflow": 2.0, "naswot": 2.0}, {"synflow": 1.0, "naswot": -inf}]
    votes = rank_vote(table)
    assert len(votes) == 3 and all(math.isfinite(v) for v in votes)
    # synflow: B, C, then A (NaN) last; naswot: A, B, then C (-inf) last. Both broken ones keep a vote.
    assert votes == pytest.approx([1.0, 1.5, 0.5])
    # Every value broken: still one vote each, all tied (the search then takes the earliest proposal).
    assert rank_vote([{"synflow": nan}, {"synflow": nan}]) == [0.5, 0.5]
    assert rank_vote([{"synflow": nan}]) == [0.0]


def test_jacov_is_nan_when_an_images_jacobian_is_constant_and_naswot_minus_inf_on_identical_images(batch):
    x, y = batch

    class Blind(nn.Module):  # ignores its input: every Jacobian is zero
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 10)

        def forward(self, x):
            return self.fc(torch.ones(len(x), 1, device=x.device)) + 0 * x.sum()

    assert math.isnan(get_proxy("jacov")(Blind(), x, y))
    twins = torch.cat([x[:1], x[:1]])
    assert get_proxy("naswot")(build(PRESETS["seed003_net"]), twins, y[:2]) == float("-inf")
    assert ranks([get_proxy("naswot")(build(PRESETS["seed003_net"]), twins, y[:2]), -1e9]) == [2.0, 1.0]


def test_the_proxy_batch_is_a_deterministic_normalised_sample_of_the_training_images():
    data = make_synthetic()
    x, y = proxy_batch(data, 16, seed=3)
    x2, y2 = proxy_batch(data, 16, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert not torch.equal(proxy_batch(data, 16, seed=4)[1], y) or not torch.equal(proxy_batch(data, 16, seed=4)[0], x)
    full, _ = proxy_batch(data, len(data.y_train), seed=0)  # all of them: per-channel mean 0, std 1
    assert full.mean(dim=(0, 2, 3)).abs().max() < 1e-3 and (full.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    assert len(proxy_batch(data, 10 ** 6)[1]) == len(data.y_train)
