"""Did the search pay off? The winner and its baselines retrained under one final recipe, from the same seeds.

The final retrain of a winner is one draw from its seed's noise (at CPU scale about +-0.5 point of test
accuracy). `--final-seeds N` retrains it from N seeds (study seed, seed + 1, ...); `--compare NAMES` retrains
each baseline with exactly the winner's final recipe (the study's, `SearchSettings.train_config`) on the same
images and from the same seeds, so that seed k of the winner and seed k of a baseline see the same data order,
augmentations and initialisation stream. Differences are therefore paired by seed: the table gives, per
baseline, the mean of (winner - baseline) over the seeds with a paired t interval (95 %) and the paired
t-test's two-sided p-value. With one seed there is no interval: one run each says nothing about noise.

Baselines (`--compare`, comma-separated): a seed preset's name (space.PRESETS), a trial number of this
study, `study:NAME` (the best trial of another study, e.g. the random-search control `X-random`, in this
storage or in `--compare-storage`) or `study:NAME#N` (that study's trial N, e.g. a faster net it trained). Default `presets`: the seed presets that meet the study's rules; `none`:
no baselines. Every run is cached under <out>/runs/ by what it trains (genome, recipe, seed, images): a crash
or Ctrl-C loses at most the epoch in progress (each run checkpoints), and the same command resumes, reusing
every finished run (search.seedrun, the one retrain path). The test set is scored once per run, after its last epoch; nothing is selected on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from space import PRESETS, Genome, analyze, get_preset
from space.rules import check

from .context import Run
from .record import TrialRecord
from .settings import SearchError, SearchSettings
from .study import load_study, stored_settings
from .trials import genome_of, pick_trial, trained_val_acc, val_acc

__all__ = ["MAX_FINAL_SEEDS", "Entrant", "check_final_seeds", "final_seeds", "resolve_entrants", "seed_stats", "paired", "verdict", "compare_rows"]

CONFIDENCE = 0.95
MAX_FINAL_SEEDS = 100  # --final-seeds: each seed is a whole final retrain of every net (say so beyond this)
DEFAULT_COMPARE = "presets"  # --compare's default: the seed presets that meet the study's rules
STUDY_PREFIX = "study:"  # --compare study:NAME: another study's winner
TRIAL_MARK = "#"  # --compare study:NAME#N: another study's trial N


@dataclass(frozen=True)
class Entrant:
    """A net in the comparison: its name in the table, where it came from, and its genome."""
    name: str
    genome: Genome
    origin: str  # "preset", "trial N" or "study NAME, trial N"
    val_acc: float | None = None  # its search validation accuracy, when it was a trial
    breaks: str = ""  # the study's rules it breaks, if any (an explicit name may; the default list never does)
    aliases: tuple[str, ...] = ()  # other --compare entries naming the same net: retrained once, under this name


def check_final_seeds(n: int) -> None:
    """SearchError (one line) for a --final-seeds outside 1..MAX_FINAL_SEEDS, before anything is trained."""
    if not 1 <= n <= MAX_FINAL_SEEDS:
        raise SearchError(f"--final-seeds must lie in 1..{MAX_FINAL_SEEDS} (each seed retrains every net of the "
                          f"final phase), got {n}")


def final_seeds(settings: SearchSettings, n: int) -> list[int]:
    """The seeds of the final retrains: the study's seed first (the exported weights are that run's)."""
    check_final_seeds(n)
    return [settings.seed + k for k in range(n)]


def resolve_entrants(run: Run, names: list[str], winner: Genome | None) -> list[Entrant]:
    """The baselines named by search.cli.parse_compare's names; the winner itself (same genome) is left out. A
    SearchError names a trial or study that is not there, before anything is trained; study:NAME entries are
    looked up in run.compare_storage()."""
    study, settings, num_classes = run.study, run.settings, run.data.num_classes
    out: list[Entrant] = []
    for name in names:
        if name == DEFAULT_COMPARE:
            out += [Entrant(p, g, "preset") for p, g in PRESETS.items()
                    if not check(g, settings.rules) and g.num_classes == num_classes]
        elif name in PRESETS:
            g = get_preset(name)
            out.append(Entrant(name, g, "preset", breaks="; ".join(check(g, settings.rules))))
        elif name.isdigit():
            t = pick_trial(study, int(name), force=True)
            g = genome_of(t)
            out.append(Entrant(f"trial {t.number}", g, f"trial {t.number}", trained_val_acc(t),
                               "; ".join(check(g, settings.rules))))
        else:
            out.append(_other_study_trial(name[len(STUDY_PREFIX):], run))
    for e in out:
        if e.genome.num_classes != num_classes:
            raise SearchError(f"--compare {e.name}: {e.genome.num_classes} classes, the data has {num_classes}")
    trained = {}  # genome JSON -> the study's trained trial of it: a preset's search validation accuracy
    for t in study.get_trials(deepcopy=False):
        js = TrialRecord.of(t).genome
        if trained_val_acc(t) is not None and js is not None:
            trained.setdefault(js, t)
    seen = {winner.to_json()} if winner is not None else set()
    kept: dict[str, Entrant] = {}  # genome JSON -> its entrant (the first name given)
    for e in out:
        js = e.genome.to_json()
        if js in kept:  # e.g. another study's trial that is a preset's warm start: one net, one row
            kept[js] = replace(kept[js], aliases=kept[js].aliases + (e.name,))
            continue
        if js in seen:
            continue
        t = trained.get(js)
        if e.val_acc is None and t is not None and e.origin == "preset":
            e = replace(e, origin=f"preset (trial {t.number})", val_acc=trained_val_acc(t))
        kept[js] = e
    return list(kept.values())


def _other_study_trial(spec: str, run: Run) -> Entrant:
    """study:NAME (its winner) or study:NAME#N (its trial N, which must have been trained)."""
    name, mark, number = spec.rpartition(TRIAL_MARK) if TRIAL_MARK in spec else (spec, "", "")
    other = load_study(run.compare_storage(name), name, "the --compare storage")
    theirs, ours = stored_settings(other), run.settings
    if theirs and ours and theirs.dataset != ours.dataset:
        raise SearchError(f"--compare study:{name} searched {theirs.dataset}, this study {ours.dataset}")
    if not mark:
        t = pick_trial(other, None, trained=True)
        return Entrant(f"{name} winner", genome_of(t), f"study {name}, trial {t.number}", val_acc(t))
    t = pick_trial(other, int(number), trained=True, force=True)
    g = genome_of(t)
    return Entrant(f"{name} trial {t.number}", g, f"study {name}, trial {t.number}", trained_val_acc(t),
                   "; ".join(check(g, ours.rules)) if ours else "")


def seed_stats(accs: list[float]) -> dict:
    """mean, std (sample, ddof 1; None for one run), min, max of test accuracies over seeds."""
    a = np.asarray(accs, dtype=float)
    return {"n": len(a), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "min": float(a.min()), "max": float(a.max())}


def paired(winner: list[float], other: list[float]) -> dict:
    """Winner minus baseline, paired by seed: mean difference, and for two or more seeds the paired t
    interval (CONFIDENCE) and the paired t-test's two-sided p-value (scipy, which scikit-learn brings)."""
    d = np.asarray(winner, dtype=float) - np.asarray(other, dtype=float)
    res = {"diff": float(d.mean()), "ci_low": None, "ci_high": None, "p": None, "test": "paired t over seeds"}
    if len(d) < 2:
        return {**res, "test": "one seed: no test"}
    sd = float(d.std(ddof=1))
    if sd < 1e-6:  # the same difference at every seed (accuracies are float32 k/n: exact to ~1e-7): no spread to test against, so no interval is claimed
        return {**res, "test": "paired t undefined: the same difference at every seed"}
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return {**res, "ci_low": float(d.mean()) - half, "ci_high": float(d.mean()) + half,
            "p": float(stats.ttest_rel(winner, other).pvalue)}


def verdict(p: dict) -> str:
    """A paired comparison in words: better/worse only where the interval excludes 0."""
    if p["ci_low"] is None:
        return "one seed: cannot tell" if p["test"].startswith("one seed") else "no spread over seeds: cannot test"
    if p["ci_low"] > 0:
        return "winner better"
    if p["ci_high"] < 0:
        return "winner worse"
    return "within noise"


def compare_rows(winner: dict, entrants: list[Entrant], runs: dict[str, list[dict]]) -> list[dict]:
    """final.json's "compare" rows: the winner first (its seeds' figures), then each baseline with the
    paired difference to the winner."""
    w_accs = [r["test_acc"] for r in runs["winner"]]
    rows = [{"name": "winner", "origin": f"trial {winner['trial']}", "summary": winner["summary"],
             "params": winner["params"], "macs": winner["macs"], "rf": winner["rf"], "val_acc": winner["val_acc"],
             "seeds": [r["seed"] for r in runs["winner"]], "test_accs": w_accs, **seed_stats(w_accs)}]
    for e in entrants:
        accs = [r["test_acc"] for r in runs[e.name]]
        a = analyze(e.genome)
        p = paired(w_accs, accs)
        rows.append({"name": e.name, "origin": e.origin, "summary": e.genome.summary(), "params": a.params,
                     "macs": a.macs, "rf": a.rf, "val_acc": e.val_acc, "breaks": e.breaks or None,
                     "seeds": [r["seed"] for r in runs[e.name]], "test_accs": accs, **seed_stats(accs),
                     "vs_winner": {**p, "verdict": verdict(p)}})
    return rows
