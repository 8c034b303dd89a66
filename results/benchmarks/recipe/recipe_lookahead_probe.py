"""Probe for recipe_cpu.md (issue 9): does lookahead (Zhang et al. 2019) on top of today's recipe help a
5-epoch run? The one trick the issue names that no screening had tried.

    OMP_NUM_THREADS=1 python results/benchmarks/recipe/recipe_lookahead_probe.py OUT_DIR MODE [DATA_DIR]

MODE "classic": every k = 5 optimizer steps the slow weights move half way to the fast ones (alpha 0.5) and
the fast ones restart from them. MODE "airbench": the same every 5 steps, but the slow weights keep a share
decay(t) = 0.95**5 * (t / T)**3 of themselves (airbench94's schedule: no effect early, strongest at the
end), and the fast weights end equal to the slow ones. Both act on all parameters and BN buffers stay as
trained. Everything else is `train.run`'s defaults (seed003_net, CIFAR-10, 45,000 train / 5,000 validation,
seed 0, 5 epochs); the weight EMA is still what is evaluated. Prints the validation accuracy per epoch.

It hooks lookahead onto the optimizer that train.engine builds (a step post-hook, no change to the
engine), so the probe measures the trick before anyone decides to build it in.
"""
import json
import sys

import torch

import train.engine as engine
from space import load_spec
from train.data import load_dataset, train_val_split
from train.defaults import DEFAULTS
from train.engine import TrainConfig, train

out, mode = sys.argv[1], sys.argv[2]
assert mode in ("classic", "airbench"), mode
data = train_val_split(load_dataset("cifar10", sys.argv[3] if len(sys.argv) > 3 else "/tmp/cifar10"), 5000, seed=0)
K = 5
_make_optimizer = engine.make_optimizer


def make_optimizer_with_lookahead(model, cfg, total_steps):
    optimizer, scheduler = _make_optimizer(model, cfg, total_steps)
    params = list(model.parameters())
    slow = [p.detach().clone() for p in params]
    state = {"step": 0}

    def hook(opt, args, kwargs):
        state["step"] += 1
        t = state["step"]
        if t % K and t != total_steps:
            return
        with torch.no_grad():
            fast = [p.detach() for p in params]
            if mode == "classic":
                torch._foreach_lerp_(slow, fast, 0.5)
            else:  # slow keeps decay of itself
                decay = 0.95 ** 5 * (t / total_steps) ** 3
                torch._foreach_lerp_(slow, fast, 1 - decay)
            torch._foreach_copy_(fast, slow)

    optimizer.register_step_post_hook(hook)
    return optimizer, scheduler


engine.make_optimizer = make_optimizer_with_lookahead
d = DEFAULTS["cifar10"]
cfg = TrainConfig(epochs=5, batch_size=d.batch_size, lr=d.lr, device="cpu", seed=0, checkpoint=out + "/checkpoint.pt")
result = train(load_spec("seed003_net"), cfg, data)
print(json.dumps({"mode": mode, "val_acc": [h.val_acc for h in result.history],
                  "val_acc_tta": result.history[-1].val_acc_tta}))
