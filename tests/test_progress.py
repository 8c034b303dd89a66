"""train.run's progress bar: drawn on a terminal or with --progress, never into a file or pipe by default."""
from __future__ import annotations

import pytest

from train import run as train_run

ARGS = ["seed003_net", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize("flags, bar", [([], False), (["--progress"], True)])
def test_train_run_draws_bars_only_on_a_terminal_or_with_progress(flags, bar, capsys, tmp_path):
    assert train_run.main([*ARGS, "--out", str(tmp_path / "o"), *flags]) == 0
    out, err = capsys.readouterr()  # captured: not a terminal
    assert ("batch/s" in err or "s/batch" in err) == bar and ("\r" in err) == bar, err
    assert "epoch 1/1: train loss" in out  # the per-epoch line is kept either way


def test_train_run_draws_bars_on_a_terminal(capsys, tmp_path, monkeypatch):
    import sys
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert train_run.main([*ARGS, "--out", str(tmp_path / "o")]) == 0
    _, err = capsys.readouterr()
    assert "\r" in err and "batch" in err
