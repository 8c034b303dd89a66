"""Issue 37: what a fresh run-through of the first ten minutes still tripped on, each checked."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from search import plots
from search.report import _trained_on
from search.settings import SearchError
from search.storage import open_storage
from tests.search_helpers import settings, write_cifar_batches
from train.data import DataError, load_cifar10, make_synthetic


def test_a_storage_path_through_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "x").write_text("not a folder")
    with pytest.raises(SearchError) as e:
        open_storage(f"sqlite:///{tmp_path}/x/y.db")
    assert f"{tmp_path / 'x'} is a file, not a folder" in str(e.value) and "does not exist" not in str(e.value)


def test_a_missing_cifar_batch_says_the_copy_is_incomplete_and_how_to_get_a_whole_one(tmp_path):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py", make_synthetic(50, 10))
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, download=False)
    text = str(e.value)
    assert "data_batch_2" in text and "incomplete" in text and "drop --no-download" in text
    assert "delete it and re-download" not in text


def test_the_report_says_plainly_when_the_final_retrain_used_a_training_subset():
    final = {"n_train": 1_000}
    assert "only the --subset-train 1,000 subset" in _trained_on(final, settings(subset_train=1_000))
    assert _trained_on(final, settings()) == "all 1,000 training images"


def _figure(monkeypatch):
    """The next plot's figure, kept open instead of saved."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig) or path)
    return kept


def _board(states, presets=None):
    n = len(states)
    return pd.DataFrame({"number": range(n), "state": states,
                         "val_acc": [0.5 + 0.05 * i if s in ("completed", "pruned") else np.nan
                                     for i, s in enumerate(states)],
                         "params": [10_000 * (i + 1) for i in range(n)], "macs": [1e6 * (i + 1) for i in range(n)],
                         "preset": presets or [None] * n, "pareto": [s == "completed" for s in states],
                         "best": [i == n - 1 for i in range(n)]})


def test_history_marks_the_rejected_candidates_it_says_are_included(monkeypatch, tmp_path):
    kept = _figure(monkeypatch)
    plots.plot_history(_board(["rejected", "completed", "rejected", "pruned", "completed"]), tmp_path / "h.png")
    ax = kept[0].axes[0]
    marks = [c for c in ax.collections if c.get_label() == "rejected (never trained)"]
    assert len(marks) == 1 and sorted(marks[0].get_offsets()[:, 0]) == [0, 2]


def test_rejected_plot_says_so_when_nothing_was_rejected(monkeypatch, tmp_path):
    kept = _figure(monkeypatch)
    plots.plot_rejected([False] * 9, tmp_path / "r.png", baseline=0.3)
    assert any("none of the 9 proposals rejected" in t.get_text() for t in kept[0].axes[0].texts)


def test_final_curves_have_whole_epoch_ticks(monkeypatch, tmp_path):
    kept = _figure(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.3 * e, "lr": 0.1 / e} for e in (1, 2, 3)]
    plots.plot_final(history, tmp_path / "f.png")
    for ax in kept[0].axes:
        ticks = ax.get_xticks()
        if ax.get_xlabel() == "epoch":
            assert all(float(t).is_integer() for t in ticks), ticks


def test_accuracy_vs_cost_rings_and_names_the_seed_presets(monkeypatch, tmp_path):
    kept = _figure(monkeypatch)
    board = _board(["completed", "rejected", "completed", "pruned"], presets=["seed003_net", "seed001", None, None])
    plots.plot_pareto(board, tmp_path / "p.png", 200_000)
    ax = kept[0].axes[0]
    rings = [c for c in ax.collections if c.get_label() == "seed preset"]
    assert len(rings) == 1 and len(rings[0].get_offsets()) == 1  # the rejected preset has no accuracy
    assert [t.get_text() for t in ax.texts] == ["seed003_net"]


def test_the_readme_lines_turn_a_uint8_image_into_exactly_what_the_net_was_trained_on():
    """README's snippet: a real uint8 H x W x 3 image becomes the same tensor the training pipeline makes."""
    import re
    import torch
    from tests.test_readme import README, blocks
    from train.data import load_digits32
    from train.loader import DeviceLoader

    (code,) = [b for b in blocks(README, "python") if "permute" in b]
    lines = [line for line in code.splitlines() if line.startswith("x = ")]
    assert len(lines) == 2 and "permute(2, 0, 1)" in lines[0]
    data = load_digits32()
    img, MEAN, STD = data.x_test[7], tuple(map(float, data.mean)), tuple(map(float, data.std))
    scope = {"torch": torch, "img": img, "MEAN": MEAN, "STD": STD}
    for line in lines:
        exec(re.sub(r"\s+#.*$", "", line), scope)
    loader = DeviceLoader(data.x_test[7:8], data.y_test[7:8], data.mean, data.std, 1, torch.device("cpu"),
                          train=False, augment=None)
    (expected, _), = list(loader)
    assert scope["x"].shape == (1, 3, 32, 32)
    torch.testing.assert_close(scope["x"], expected.float().contiguous(), atol=1e-5, rtol=1e-5)
