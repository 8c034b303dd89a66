"""A trial's stored record: every user attr the search keeps on an Optuna trial, declared once.

`TrialRecord`'s fields are the stored keys, by name; nothing else in the search reads or writes a trial's user
attrs (tests/test_structure.py checks, from this file's fields). Read a trial with `TrialRecord.of(trial)`;
write with `write` (a live trial), `write_stored` (any trial, through the storage: a dead worker's or a
heartbeat) or `enqueue` (a candidate queued with its exact genome). An unknown name is a TypeError: a key
spelt wrong never reaches a study.

The keys are those of every study written since the first version, so any study opens; a field a later
version adds is None when an older study lacks it, and keys this version does not know are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from space import Analysis, Genome
from train.files import finite_or_none

__all__ = ["TrialRecord", "KEYS", "write", "write_stored", "enqueue", "carried", "candidate_values", "training_values",
           "prescreen_values"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial's stored user attrs; None where the trial has none (a field is stored only when set)."""

    # The candidate (search.loop: what the trial proposes, set once it is built)
    genome: str | None = None  # the exact Genome, as JSON: what is trained, exported, and compared as a duplicate
    summary: str | None = None  # Genome.summary()
    n_params: int | None = None
    macs: int | None = None  # multiply-accumulates per image
    rf: int | None = None  # receptive field, input pixels
    peak_act: int | None = None  # peak activations, elements per image
    latency_ms: float | None = None  # predicted by the study's latency table (none without one)
    preset: str | None = None  # the seed preset it is (enqueued by search.study.enqueue_presets)
    # Its training (search.loop, after the run)
    epochs: int | None = None  # trained (a pruned trial fewer than --trial-epochs)
    train_seconds: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    train_status: str | None = None  # train.engine.TrainResult.status
    wall_seconds: float | None = None
    oom_retry: str | None = None  # trained after one out-of-memory: how it was retried (search.memory)
    # A --prescreen round's verdict (search.prescreen)
    prescreen_proxy: str | None = None
    prescreen_k: int | None = None  # proposals in its round
    prescreen_rank: int | None = None  # 1: chosen
    prescreen_score: float | None = None
    prescreen_values: dict | None = None  # every proxy's value
    prescreen_lost_to: int | None = None  # the round's winner, for a proposal screened out
    # Its state (search.lifecycle)
    phase: str | None = None  # lifecycle.Phase of a RUNNING trial
    trained: bool | None = None  # completed or pruned by training
    rejected: str | None = None  # the rules it broke
    duplicate_of: int | None = None  # the trained trial of the same genome whose result it copies
    failed_reason: str | None = None
    retry_of: int | None = None  # the trial whose candidate it trains again
    retries: int | None = None
    too_large: str | None = None  # out of device memory twice: why
    # What Optuna's own tools (optuna-dashboard, `optuna trials`) show of a candidate never trained: a rejected
    # one is PRUNED there (with constraints > 0, how TPE learns the infeasible region), so this tells it apart.
    status: str | None = None
    worker: str | None = None  # who runs a RUNNING trial (search.liveness.worker_identity)
    heartbeat_at: float | None = None  # when its worker last showed it was alive (journal storages)

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        attrs = trial.user_attrs
        return cls(**{k: attrs[k] for k in KEYS if k in attrs})

    def genome_of(self) -> Genome | None:
        return Genome.from_json(self.genome) if self.genome is not None else None


KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrialRecord))


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    unknown = values.keys() - set(KEYS)
    if unknown:
        raise TypeError(f"not a stored trial key: {', '.join(sorted(unknown))}")
    return values


def write(trial: optuna.Trial, **values: Any) -> None:
    """Store these fields on a live trial (this process's)."""
    for key, value in _checked(values).items():
        trial.set_user_attr(key, value)


def write_stored(storage: BaseStorage, trial_id: int, **values: Any) -> None:
    """Store these fields through the storage: for a trial this process does not hold as a live Trial."""
    for key, value in _checked(values).items():
        storage.set_trial_user_attr(trial_id, key, value)


def enqueue(study: optuna.Study, params: dict[str, Any], **values: Any) -> None:
    """Queue a candidate (its params) carrying these fields (e.g. its exact genome and preset name)."""
    study.enqueue_trial(params, user_attrs=_checked(values))


# What a queued retry carries over from the trial it retries: the exact candidate and, for a --prescreen
# winner, its round's verdict (it is trained without a new round).
_CARRIED = ("preset", "genome", "prescreen_proxy", "prescreen_k", "prescreen_rank", "prescreen_score",
            "prescreen_values")


def carried(trial: FrozenTrial) -> dict[str, Any]:
    """The fields of `trial` that a queued retry of it carries."""
    r = TrialRecord.of(trial)
    return {k: getattr(r, k) for k in _CARRIED if getattr(r, k) is not None}


def candidate_values(genome: Genome, a: Analysis, latency_ms: float | None) -> dict[str, Any]:
    """The candidate's fields: its genome and what is known of it before training."""
    return {"genome": genome.to_json(), "summary": genome.summary(), "n_params": a.params, "macs": a.macs, "rf": a.rf,
            "peak_act": a.peak_activations, **({"latency_ms": round(latency_ms, 4)} if latency_ms is not None else {})}


def training_values(result: Any, wall_seconds: float) -> dict[str, Any]:
    """The fields of a training run (a train.engine.TrainResult) of `wall_seconds`."""
    return {"epochs": result.epochs, "train_seconds": round(result.train_seconds, 3),
            "images_per_s": round(result.images_per_s, 1), "device": result.device, "train_status": result.status,
            "wall_seconds": round(wall_seconds, 3)}


def prescreen_values(proxy: str, k: int, rank: int, score: float, values: dict[str, float]) -> dict[str, Any]:
    """The fields of a --prescreen round's verdict on one proposal."""
    return {"prescreen_proxy": proxy, "prescreen_k": k, "prescreen_rank": rank, "prescreen_score": finite_or_none(score),
            "prescreen_values": {name: finite_or_none(v) for name, v in values.items()}}
