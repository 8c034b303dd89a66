"""`search.run --prescreen K`: train only the best of K feasible proposals, by a zero-cost proxy.

Every trained trial is chosen like this (search.loop.Search.step): the sampler proposes candidates (each
an ordinary study trial, asked the normal way, so TPE's model proposes them); rejected ones and duplicates
are recorded exactly as without a prescreen and do not count; the first K feasible ones are scored by the
proxy (train.proxies, each genome built with the study's seed, on a fixed batch of PROXY_BATCH training
images of the search's own training split: never the validation split); the best is trained, the other
K - 1 are "screened out". Enqueued candidates (the seed presets, retries) are trained without a prescreen:
they were chosen by us, not by the sampler. A proxy rejects nothing by itself: a non-finite score ranks
last, and a round whose scores are all broken trains its first proposal. The round's first feasible
proposal reserves one of the --trials places for the round's winner (counted as running, like a trial in
training), so several workers never screen for the same last place.

How the K - 1 losers are recorded: as FAIL, with user attrs prescreen_score, prescreen_rank,
prescreen_lost_to (the winner's number) and the proxy values, so they are visible (search.lifecycle:
"screened", a row of the leaderboard) but invisible to TPE. Not PRUNED, which TPE would read as a bad trial:
K - 1 PRUNED losers per trained trial would swell TPE's "good" set K-fold, teach it the proxy's opinion as
if it were a measured accuracy, and end its random start-up K times too early. FAIL trials are not read at
all (the reading of Optuna's TPE source: results/benchmarks/notes/code_notes.md).
While a round is being gathered its trials are RUNNING: with constant_liar TPE treats them as bad, so the K
proposals of one round spread out instead of repeating the first one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from space import Genome, build
from train.data import ImageData
from train.engine import resolve_device
from train.proxies import PROXIES, VOTE, proxy_batch, rank_vote
from train.proxies import score as proxy_values

from .settings import DEFAULT_PROXY, SearchError, SearchSettings

__all__ = ["PROXY_CHOICES", "DEFAULT_PROXY", "PROXY_BATCH", "ScoreFn", "Prescreen", "parse_prescreen", "proxy_names",
           "scores_of", "best_first", "make_prescreen"]

PROXY_CHOICES = ("vote", *PROXIES)  # vote: train.proxies.rank_vote over train.proxies.VOTE
PROXY_BATCH = 64  # images per proxy evaluation: one forward/backward, milliseconds on a GPU

# The raw proxy values {name: value} of every genome of one round, in order.
ScoreFn = Callable[[Sequence[Genome]], list[dict[str, float]]]


@dataclass(frozen=True)
class Prescreen:
    k: int  # proposals per trained trial (>= 2)
    proxy: str  # one of PROXY_CHOICES
    score: ScoreFn

    def rank(self, genomes: Sequence[Genome]) -> tuple[list[int], list[float], list[dict[str, float]]]:
        """(indices best first, one score each, the raw proxy values each) of one round's genomes."""
        values = self.score(genomes)
        scores = scores_of(values, self.proxy)
        return best_first(scores), scores, values


def parse_prescreen(k: int, proxy: str | None) -> tuple[int, str]:
    """(K, proxy) from the flags; SearchError (one line) for a bad value."""
    if k < 1:
        raise SearchError(f"--prescreen must be a positive integer (1: off), got {k}")
    if proxy is not None and proxy not in PROXY_CHOICES:
        raise SearchError(f"unknown --proxy {proxy!r}; choose one of: {', '.join(PROXY_CHOICES)}")
    if proxy is not None and k == 1:
        raise SearchError(f"--proxy {proxy} needs --prescreen K with K >= 2 (the proposals per trained trial)")
    return k, proxy or DEFAULT_PROXY


def proxy_names(proxy: str) -> tuple[str, ...]:
    """The train.proxies a choice needs computed."""
    return tuple(VOTE) if proxy == "vote" else (proxy,)


def scores_of(values: Sequence[dict[str, float]], proxy: str) -> list[float]:
    """One score per candidate, higher = better: the vote (how many candidates it beats, averaged over the
    proxies of VOTE) or the proxy's own value (non-finite: ranked last by best_first)."""
    if proxy == "vote":
        return rank_vote(values, names=VOTE)
    return [float(v[proxy]) for v in values]


def best_first(scores: Sequence[float]) -> list[int]:
    """Indices of the candidates, best first; non-finite scores last; ties: the earlier proposal first."""
    return sorted(range(len(scores)), key=lambda i: (not math.isfinite(scores[i]),
                                                     -scores[i] if math.isfinite(scores[i]) else 0.0, i))


def make_prescreen(data: ImageData, settings: SearchSettings, device: str = "auto") -> Prescreen | None:
    """The real scorer for settings.prescreen > 1 (None when it is off), on the search's training images."""
    if settings.prescreen < 2:
        return None
    x, y = proxy_batch(data, PROXY_BATCH, seed=settings.seed, device=resolve_device(device))
    names = proxy_names(settings.proxy)

    def score(genomes: Sequence[Genome]) -> list[dict[str, float]]:
        out = []
        for g in genomes:
            try:  # the same weights as the trial would start from: built with the study's seed
                out.append(proxy_values(build(g, seed=settings.seed), x, y, names, seed=settings.seed))
            except Exception:  # e.g. out of memory: the candidate ranks last, it is not dropped
                out.append({name: float("nan") for name in names})
        return out

    return Prescreen(settings.prescreen, settings.proxy, score)
