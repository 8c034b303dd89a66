"""`Rules`: the limits every searched net must meet, passed whole (see space.analysis.check for the rest of
the rules: at least one depthwise-separable and one dilated conv)."""
from __future__ import annotations

from dataclasses import dataclass

from .analysis import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF

__all__ = ["Rules"]


@dataclass(frozen=True)
class Rules:
    max_params: int = DEFAULT_MAX_PARAMS  # parameters
    min_rf: int = DEFAULT_MIN_RF  # receptive field, input pixels
    max_macs: int | None = None  # multiply-accumulates per image; None: no limit
