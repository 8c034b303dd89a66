"""The training step is GPU-ready without a GPU: no host sync per step, the device chosen in one place."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from train.data import make_synthetic
from train.engine import TrainConfig, train
from tests.test_engine import TINY

ROOT = Path(__file__).resolve().parents[1]
# Each of these copies a value from the device to the host: on CUDA the host waits for the queue to drain.
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _syncs_in_a_run(monkeypatch, steps_per_epoch: int) -> int:
    calls = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    data = make_synthetic(4 * steps_per_epoch, 8)  # batches of 4: cheap steps, many of them
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, device="cpu", augment=None, eval_every=1, checkpoint=None)
    result = train(TINY, cfg, data)
    monkeypatch.undo()
    assert result.status == "completed" and result.epochs == 2
    return len(calls)


def test_host_syncs_per_epoch_do_not_grow_with_the_steps(monkeypatch):
    # 30 steps: more than any "check every k steps" interval worth having
    few, many = _syncs_in_a_run(monkeypatch, 3), _syncs_in_a_run(monkeypatch, 30)
    assert few == many, f"{few} syncs with 3 steps per epoch, {many} with 30: something syncs every few steps"
    assert few <= 2 * 12  # a handful per epoch: the epoch's loss and accuracy, the evaluation's result (plain, flip-TTA)


def test_the_device_is_chosen_in_one_place():
    """No `.cuda()` or literal device in the training and search code: everything follows resolve_device."""
    offenders = []
    for path in [*ROOT.glob("train/*.py"), *ROOT.glob("search/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.cuda\(|device=['\"]cuda", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
