"""`load_best(study_name, storage)`: a study's retrained winner for Python users, ready to predict.

As Keras Tuner's `get_best_models`: the net built from the winner's genome with the weights of its final
retrain (best_model.pt in the study's output folder, which search.run stored), in eval mode, with the input
normalisation it was trained with and the class names:

    from search.best import load_best
    best = load_best("cifar10-nas")                      # or load_best("x", "sqlite:///results/x.db")
    x = (images_float01 - best.mean) / best.std          # N x 3 x 32 x 32, RGB, values in [0, 1] before
    labels = [best.classes[i] for i in best.model(x).argmax(1)]

A study not retrained yet (search.run --no-final) has no weights: SearchError says to run search.retrain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from space import Genome, build
from train.engine import TrainError, load_weights
from train.files import RESULTS

from .cli import locate
from .final import load_final
from .places import recall
from .settings import SearchError
from .storage import open_storage, redact
from .study import load_study

__all__ = ["Best", "load_best"]


@dataclass(frozen=True)
class Best:
    model: torch.nn.Module  # eval mode, the final retrain's weights (the EMA's, where the recipe keeps one)
    genome: Genome
    trial: int  # the study's trial it is
    mean: torch.Tensor  # 1 x 3 x 1 x 1, per channel (RGB) in [0, 1] units: subtract before dividing by std
    std: torch.Tensor
    classes: tuple[str, ...]
    test_acc: float  # of these weights, on the test set, evaluated once by the final retrain
    out: Path  # the folder the files came from


def load_best(study_name: str | None = None, storage: str | None = None, out: str | Path | None = None) -> Best:
    """The retrained winner of the study (found as search.report finds it: by name in results/, or in
    `storage`); `out`: its output folder when not the one search.run stored."""
    found = locate(storage, study_name)
    study = load_study(open_storage(found.url, create=False), found.name, redact(found.url))
    folder = Path(recall(study, "out", None if out is None else str(out), RESULTS / study.study_name)[0])
    final = load_final(folder)
    if not (final and final.get("study") == study.study_name and (folder / "best_model.pt").is_file()):
        raise SearchError(f"study {study.study_name!r} has no retrained winner in {folder}/ (final.json and "
                          f"best_model.pt); run python -m search.retrain --study-name {study.study_name}")
    genome = Genome.from_json(final["genome"])
    model = build(genome)
    try:
        model.load_state_dict(load_weights(folder / "best_model.pt"))
    except (TrainError, RuntimeError) as e:
        raise SearchError(f"{folder / 'best_model.pt'} does not hold trial {final['trial']}'s weights: {e}") from None
    return Best(model.eval(), genome, int(final["trial"]), torch.tensor(final["mean"]).view(1, 3, 1, 1),
                torch.tensor(final["std"]).view(1, 3, 1, 1), tuple(final.get("classes", ())),
                float(final["test_acc"]), folder)
