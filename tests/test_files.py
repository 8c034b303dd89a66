"""train.files: what the commands write, as strict JSON."""
from __future__ import annotations

import json
import math

import numpy as np

from train.files import finite_or_none


def test_finite_or_none_turns_nan_and_infinities_into_null_and_leaves_the_rest():
    for bad in (math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("-inf")):
        assert finite_or_none(bad) is None, bad
    for good in (0.5, np.float64(0.5), np.float32(0.5), -0.0):
        assert finite_or_none(good) == good and type(finite_or_none(good)) is float, good
    for other in (3, True, np.int64(7), "nan", None, [math.nan]):  # not a float: returned as it is
        assert finite_or_none(other) is other
    epoch = {"epoch": 2, "val_acc": math.nan, "train_loss": 0.25, "lr": math.inf, "note": None}
    text = json.dumps({k: finite_or_none(v) for k, v in epoch.items()}, allow_nan=False)  # strict: no NaN
    assert json.loads(text) == {"epoch": 2, "val_acc": None, "train_loss": 0.25, "lr": None, "note": None}
