"""The training step is GPU-ready without a GPU: no host sync per step, the device chosen in one place."""
from __future__ import annotations

import ast
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


ONE_PLACE = "train/device.py"  # resolve_device, check_device, canonical_device: where a device is chosen
# search.workers places the --jobs workers: each sees its one GPU as cuda:0 behind CUDA_VISIBLE_DEVICES.
PLACEMENT = {("search/workers.py", "'cuda:0'")}
ACCELERATOR = re.compile(r"(cuda|mps)(:\d+)?")  # a name that picks an accelerator: cuda, cuda:1, mps


def _device_choices(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every place that picks a device by itself: a `.cuda()` call, torch.cuda.set_device, and
    an accelerator's name as a literal ("cuda", "cuda:1", "mps", f"cuda:{i}") anywhere but in a test of a
    name (`device.type == "cuda"`, `name.startswith("cuda")` test the device given; `.to("cuda")`,
    `device="cuda"`, a default of "cuda" pick one)."""
    sides = [s for c in ast.walk(tree) if isinstance(c, ast.Compare) for s in (c.left, *c.comparators)]
    sides += [a for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
              and c.func.attr in ("startswith", "endswith") for a in c.args]
    compared = {id(n) for side in sides for n in ast.walk(side)}
    found = []
    for node in ast.walk(tree):
        method = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if method in ("cuda", "set_device"):
            found.append((node.lineno, f".{method}()"))
        elif id(node) in compared:
            continue
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ACCELERATOR.fullmatch(node.value):
            found.append((node.lineno, repr(node.value)))
        elif (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)
              and re.match(r"(cuda|mps):", str(node.values[0].value))):
            found.append((node.lineno, "f" + repr(node.values[0].value + "{...}")))
    return sorted(found)


def test_the_device_is_chosen_in_one_place():
    """No `.cuda()` and no literal accelerator in the code outside train/device.py: all follows resolve_device."""
    paths = sorted(p for package in ("space", "train", "search") for p in ROOT.glob(f"{package}/*.py")
                   if p.relative_to(ROOT).as_posix() != ONE_PLACE)
    offenders = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in paths
                 for line, what in _device_choices(ast.parse(p.read_text()))
                 if (p.relative_to(ROOT).as_posix(), what) not in PLACEMENT]
    assert len(paths) > 30 and not offenders, offenders


def test_the_device_check_catches_every_way_of_picking_one():
    picks = ('m.cuda()\nx.to("cuda")\ntorch.device("cuda:1")\nf(x, device="mps")\ntorch.cuda.set_device(0)\n'
             'name = f"cuda:{i}"\ndef g(device="cuda"): pass\n')
    assert [line for line, _ in _device_choices(ast.parse(picks))] == [1, 2, 3, 4, 5, 6, 7]
    tests = ('ok = d.type == "cuda" or d.type in ("cuda", "mps") or name.startswith(("cuda", "mps"))\n'
             'help = "auto, cpu, cuda, cuda:1, mps"\ntorch.cuda.is_available()\ntorch.cuda.synchronize(device)\n'
             'x.to(device)\n')
    assert _device_choices(ast.parse(tests)) == []
    assert _device_choices(ast.parse((ROOT / ONE_PLACE).read_text()))  # where the names are: the check sees them
