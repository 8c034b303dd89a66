"""What a study remembers of its search.run: the output folder, the data folder and the final retrain's length.

search.run stores them in the study (user attr "places", absolute paths), so that the commands that follow a
search (search.retrain, search.export, search.report) work on the same files from any working directory,
without repeating the flags. A flag given to those commands still wins; each says where every value came
from (`recall`'s source), so a surprise is visible before anything is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

__all__ = ["PLACES_KEY", "store_places", "recall", "GIVEN", "STORED", "DEFAULT"]

PLACES_KEY = "places"  # {"out": absolute path, "data_dir": absolute path, "final_epochs": int}
GIVEN, STORED, DEFAULT = "given", "stored with the study", "default"


def store_places(study: optuna.Study, out: Path, data_dir: str | Path, final_epochs: int) -> None:
    """Record this run's output folder, data folder and final epochs (the latest run's win)."""
    places = {"out": str(Path(out).resolve()), "data_dir": str(Path(data_dir).resolve()),
              "final_epochs": int(final_epochs)}
    if study.user_attrs.get(PLACES_KEY) != places:
        study.set_user_attr(PLACES_KEY, places)


def recall(study: optuna.Study, key: str, given: Any, default: Any) -> tuple[Any, str]:
    """(value, where it came from): the flag's value if given, else the study's stored one, else `default`."""
    if given is not None:
        return given, GIVEN
    stored = (study.user_attrs.get(PLACES_KEY) or {}).get(key)
    if stored is not None:
        return stored, STORED
    return default, DEFAULT
