"""TPE against its random-search control over the budget: the best validation accuracy after n trained trials.

    python results/benchmarks/payoff/anytime.py [--plot FILE.png] STUDY@URL ...

e.g. `anytime.py cifar10-tpe-100@sqlite:///results/benchmarks/payoff/cifar10-tpe-100.db
cifar10-random-100@sqlite:///results/benchmarks/payoff/cifar10-random-100.db`. For each study, trials in the
order they were asked (one process each, so trial number = order), counting the trained ones (completed or
pruned, what `--trials` counts; rejected and duplicate proposals cost no training): after n trained trials, the
best and the mean of the 5 best validation accuracies of the completed ones (search.trials.ranked_trials: a
pruned trial's accuracy after fewer epochs is not comparable), and how many completed. One markdown row per 10
trained trials and at the last. The trial figures are the search's own, scored on its validation split: one
study, one seed, so a difference between two studies is one run, not a mean (the 5-seed test table judges the
winners).
"""
from __future__ import annotations

import argparse
import warnings

import optuna

from search.trials import ranked_trials, trained_val_acc

STEP = 10
TOP = 5


def curve(study: optuna.Study) -> list[dict]:
    """One row per trained trial, in trial order: n trained so far, best and top-5 mean of the completed ones."""
    seen, out = [], []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        seen.append(t)
        if trained_val_acc(t) is None:
            continue
        ranked = ranked_trials(seen)
        accs = [t.values[0] for t in ranked[:TOP]]
        out.append({"n": len(out) + 1, "trial": t.number, "completed": len(ranked),
                    "best": accs[0] if accs else None, "best_trial": ranked[0].number if ranked else None,
                    "top5": sum(accs) / len(accs) if len(accs) == TOP else None})
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return " | | "
    best = f"{row['best']:.4f} (trial {row['best_trial']})" if row["best"] is not None else "-"
    top = f"{row['top5']:.4f}" if row["top5"] is not None else "-"
    return f"{best} | {top} | {row['completed']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("studies", nargs="+", help="NAME@STORAGE_URL")
    p.add_argument("--plot", help="also draw the best-so-far curves into this PNG")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    curves = {}
    for spec in args.studies:
        name, _, url = spec.partition("@")
        curves[name] = curve(optuna.load_study(study_name=name, storage=url))
    longest = max(len(c) for c in curves.values())
    marks = sorted({n for n in range(STEP, longest + 1, STEP)} | {len(c) for c in curves.values() if c})
    print("| trained | " + " | ".join(f"{n}: best val (trial) | top-{TOP} mean | completed" for n in curves) + " |")
    print("|---:|" + "---|---:|---:|" * len(curves))
    for m in marks:
        print(f"| {m} | " + " | ".join(_cell(c[m - 1] if m <= len(c) else None) for c in curves.values()) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, c in curves.items():
            pts = [(r["n"], r["best"]) for r in c if r["best"] is not None]
            ax.step([n for n, _ in pts], [b for _, b in pts], where="post", label=name)
        ax.set_xlabel("trained trials")
        ax.set_ylabel("best validation accuracy so far")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
