"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .settings import COSTS  # noqa: E402

__all__ = ["plot_pareto", "plot_history", "plot_rejected", "plot_final", "plot_compare", "thirds"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(ax, path: Path, labels: tuple[str, str, str], **legend) -> Path:
    """Label the axes (x label, y label, title), draw the legend and grid, save the figure to `path`."""
    xlabel, ylabel, title = labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(**legend)
    ax.grid(alpha=0.3)
    return _save(ax.figure, path)


def plot_pareto(board: pd.DataFrame, path: Path, max_params: int | None = None, cost: str = "params") -> Path:
    """Validation accuracy against a cost column of the leaderboard ('params' or 'macs'; `max_params` is the
    budget of that cost): completed trials, the Pareto front (the board's `pareto` column), pruned ones faint."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    board = board.assign(x=board[cost].astype(float), val_acc=board.val_acc.astype(float))
    done = board[board.state == "completed"]
    pruned = board[(board.state == "pruned") & board.val_acc.notna()]
    ax.scatter(pruned.x, pruned.val_acc, s=14, c="0.75", label="pruned (accuracy when stopped)")
    ax.scatter(done.x, done.val_acc, s=22, c="tab:blue", label="completed")
    if len(done):
        front = done[done.pareto].sort_values("x")
        ax.step(front.x, front.val_acc, where="post", c="tab:orange", lw=1.5, marker="o", ms=3, label="Pareto front")
        best = done[done.best]
        ax.scatter(best.x, best.val_acc, marker="*", s=220, c="tab:red", zorder=5, label="winner")
    _mark_presets(ax, board[board.state.isin(["completed", "pruned"]) & board.preset.notna() & board.val_acc.notna()])
    if max_params:
        ax.axvline(max_params, c="k", ls=":", lw=1, label=f"budget {max_params:,}")
    return _finish(ax, path, (COSTS[cost], "validation accuracy", f"accuracy vs {COSTS[cost]}"), fontsize=8,
                   loc="lower right")


def _mark_presets(ax, presets: pd.DataFrame) -> None:
    """Ring the seed presets (the hand-designed nets the search should beat) and name them."""
    if not len(presets):
        return
    ax.scatter(presets.x, presets.val_acc, s=90, facecolors="none", edgecolors="k", zorder=6, label="seed preset")
    for x, y, name in zip(presets.x, presets.val_acc, presets.preset):
        ax.annotate(str(name), (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7)


def plot_history(board: pd.DataFrame, path: Path) -> Path:
    """Validation accuracy of every trained trial by trial number, the best so far, and where the rejected
    candidates (never trained, no accuracy) came."""
    fig, ax = plt.subplots(figsize=(7, 4))
    b = board.sort_values("number").assign(val_acc=board.val_acc.astype(float))
    done, pruned = b[b.state == "completed"], b[(b.state == "pruned") & b.val_acc.notna()]
    ax.scatter(pruned.number, pruned.val_acc, s=14, c="0.7", label="pruned")
    ax.scatter(done.number, done.val_acc, s=20, c="tab:blue", label="completed")
    if len(done):
        ax.step(done.number, done.val_acc.cummax(), where="post", c="tab:red", label="best so far")
    rejected = b[b.state == "rejected"]
    if len(rejected):
        low = min([*b.val_acc.dropna(), 1.0])
        ax.scatter(rejected.number, [low - 0.02] * len(rejected), marker="x", s=18, c="tab:gray",
                   label="rejected (never trained)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(ax, path, ("trial number (rejected candidates included)", "validation accuracy",
                              "optimisation history"), fontsize=8, loc="lower right")


def thirds(rejected: Sequence[bool]) -> tuple[float, float] | None:
    """Rejected fraction in the first and the last third of the proposed candidates."""
    n = len(rejected) // 3
    if n == 0:
        return None
    return float(np.mean(rejected[:n])), float(np.mean(rejected[-n:]))


def plot_rejected(rejected: Sequence[bool], path: Path, baseline: float | None = None) -> Path:
    """Rejected fraction over the sampler's proposals: a moving window, the running mean, and the rate of
    uniform random sampling for reference."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    r = np.asarray(rejected, float)
    if baseline is not None:
        ax.axhline(baseline, c="0.6", ls=":", label=f"uniform random sampling ({baseline:.0%})")
    if len(r):
        x = np.arange(1, len(r) + 1)
        w = max(5, len(r) // 10)
        moving = np.convolve(r, np.ones(w), "full")[:len(r)] / np.minimum(x, w)
        ax.plot(x, moving, c="tab:red", label=f"last {w} candidates")
        ax.plot(x, np.cumsum(r) / x, c="0.4", ls="--", label="all so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not r.any():  # a flat line at 0 would look like a broken plot
        ax.text(0.5, 0.5, f"none of the {len(r)} proposals rejected" if len(r) else "no proposals yet",
                transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.3")
    ax.set_ylim(-0.02, 1.02)
    return _finish(ax, path, ("candidate proposed by the sampler", "fraction rejected",
                              "infeasible candidates (rules broken, never trained)"), fontsize=8)


def plot_final(history: list[dict], path: Path) -> Path:
    """The final retrain's learning curves: training loss and accuracy per epoch, and the learning rate."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], c="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (with label smoothing)")
    acc_ax = ax1.twinx()
    acc_ax.plot(ep, [h["train_acc"] for h in history], c="tab:green", label="train accuracy")
    acc_ax.set_ylabel("accuracy")
    lines = ax1.get_lines() + acc_ax.get_lines()
    ax1.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="center right")
    ax1.set_title("final retrain")
    ax2.plot(ep, [h["lr"] for h in history], c="tab:purple")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("learning rate (end of epoch)")
    ax2.set_title("OneCycle schedule")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    return _save(fig, path)


MIN_SPAN = 0.02  # accuracy: compare.png's x axis spans at least 2 points, so a gap within noise looks small


def compare_xlim(accs: list[float]) -> tuple[float, float]:
    """The x limits of compare.png: every accuracy with a margin, over at least MIN_SPAN, so that a difference
    of a few tenths of a point is not stretched across the whole plot."""
    lo, hi = min(accs), max(accs)
    mid, half = (lo + hi) / 2, max(hi - lo, MIN_SPAN) / 2 * 1.15
    return mid - half, mid + half


def plot_compare(rows: list[dict], path: Path) -> Path:
    """The payoff (search.compare): test accuracy of the winner and each baseline, every seed a dot, the
    mean a bar with +-1 std; x: parameters would crowd, so nets are rows, named with their parameter count."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        color = "tab:red" if i == 0 else "tab:blue"
        ax.scatter(r["test_accs"], [y] * len(r["test_accs"]), s=18, c=color, alpha=0.6, zorder=3)
        ax.errorbar(r["mean"], y, xerr=r["std"] or 0.0, fmt="D", c=color, ms=7, capsize=4, zorder=4)
    ax.set_yticks(range(len(rows)), [f"{r['name']} ({r['params']:,} params)" for r in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(*compare_xlim([a for r in rows for a in r["test_accs"]]))
    seeds = len(rows[0]["test_accs"])
    ax.set_xlabel(f"test accuracy (dots: {seeds} seed{'s' if seeds > 1 else ''}; diamond: mean +- std)")
    ax.set_title("winner vs baselines, same final recipe and seeds")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
