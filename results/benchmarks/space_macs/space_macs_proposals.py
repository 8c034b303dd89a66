"""The proposals a search.run makes under a MACs cap, without training: how many are rejected, and why.

The search's first 10 trials (the 3 seed presets, then uniform draws: make_sampler's n_startup_trials) do not
depend on any accuracy, so a run whose training is replaced by a fixed made-up result proposes the same
candidates as the real run until its 10th trial. Runs with whichever tinynas is on PYTHONPATH (the old code
of a `git worktree` or this one), so the same command measures before and after:
    PYTHONPATH=. python results/benchmarks/space_macs/space_macs_proposals.py --dataset cifar10 --subset-train 10000 \
        --val-size 1000 --trial-epochs 3 --trials 4 --max-macs 20000000
"""
import argparse
import collections

import optuna

from search.loop import Search
from search.settings import SearchSettings
from search.study import enqueue_presets, make_pruner, open_study
from space import analyze
from train.defaults import DEFAULTS
from train.engine import EpochStats, TrainResult

optuna.logging.set_verbosity(optuna.logging.WARNING)
p = argparse.ArgumentParser()
p.add_argument("--dataset", default="cifar10")
p.add_argument("--trials", type=int, default=4)
p.add_argument("--trial-epochs", type=int, default=None)
p.add_argument("--subset-train", type=int, default=None)
p.add_argument("--val-size", type=float, default=None)
p.add_argument("--max-macs", type=int, default=None)
args = p.parse_args()
d = DEFAULTS[args.dataset]
val = d.val_size if args.val_size is None else (int(args.val_size) if args.val_size >= 1 else args.val_size)
s = SearchSettings(dataset=args.dataset, max_params=200_000, min_rf=44, trial_epochs=args.trial_epochs or d.trial_epochs,
                   val_size=val, seed=0, subset_train=args.subset_train, batch_size=d.batch_size,
                   lr=d.lr_for(d.batch_size), augment=d.augment, max_macs=args.max_macs)
study, _ = open_study(optuna.storages.InMemoryStorage(), "proposals", s, make_pruner("median", s.trial_epochs))
enqueue_presets(study, 10)
macs = []


def made_up(genome, on_epoch):  # every trained candidate "completes" at 0.5: only the proposals matter here
    macs.append(analyze(genome).macs)
    history = []
    for e in range(1, s.trial_epochs + 1):
        history.append(EpochStats(epoch=e, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.0,
                                  seconds=0.0, images_per_s=0.0))
        if on_epoch(history[-1]):
            return TrainResult("stopped", history, None)
    return TrainResult("completed", history, None)


Search(study, s, 10, made_up, args.trials, log=print).run()
reasons = collections.Counter("MACs" if "MACs" in t.user_attrs.get("rejected", "") else "other"
                              for t in study.trials if "rejected" in t.user_attrs)
rejected = [t.number for t in study.trials if "rejected" in t.user_attrs]
print(f"{len(study.trials)} proposals for {args.trials} trained: {len(rejected)} rejected (trials {rejected}; "
      f"{dict(reasons)}); trained MACs per image {', '.join(f'{m / 1e6:.1f} M' for m in macs)}")
