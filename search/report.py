"""`python -m search.report [--storage URL] --study-name NAME [--out DIR]`: leaderboard.csv, report.md, plots.

Everything is rebuilt from the study (and from <out>/final.json when the winner has been retrained), so
the report of a multi-worker study, or of one still running, is one command away.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from train.files import RESULTS
from train.report import classification_summary, confusion_text
from space import Genome, analyze, random_rejection_rate
from space.describe import table
from space.cli import plural

from . import plots
from .cli import ERRORS, add_study_args, make_parser, open_existing
from .final import DEPLOY_FILES, FINAL_FILES, load_final, not_compared
from .settings import COSTS, cost_name
from .storage import dashboard_command
from .study import stored_settings
from .lifecycle import Outcome, classify, count
from .places import recall
from .trials import genome_of, leaderboard, rejected_fraction

__all__ = ["RUN_PREFIX", "write_report", "write_and_list", "main"]

RUN_PREFIX = "run:"  # study user attrs "run:<start>:<host>:<pid>" describe each search.run process


def _md_table(df: pd.DataFrame) -> str:
    """A markdown table; one format per column: accuracies 4 decimals, other fractional numbers 1 decimal
    (seconds), whole numbers with thousands separators."""
    def cell(v, column: str) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, (float, np.floating)):
            if "acc" in column:
                return f"{v:.4f}"
            if column == "proxy_score":  # scales from 1 (a vote) to 1e20 (synflow)
                return f"{v:.4g}"
            return f"{v:,.0f}" if column in integral else f"{v:,.1f}"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")
    # Counts stored as floats (a column with gaps) are whole in every row: print them without decimals.
    integral = {c for c in df.columns if pd.api.types.is_float_dtype(df[c])
                and df[c].dropna().map(float.is_integer).all() and "seconds" not in c}
    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v, c) for v, c in zip(r, df.columns)) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def _device(d: dict) -> str:
    name = d.get("device_name", "")
    return f"{d.get('device', '?')} ({name})" if name and name != "cpu" else str(d.get("device", "?"))


def _runs(study: optuna.Study) -> list[dict]:
    runs = [v for k, v in study.user_attrs.items() if k.startswith(RUN_PREFIX) and isinstance(v, dict)]
    return sorted(runs, key=lambda r: r.get("started", ""))


def _per_class(final: dict) -> tuple[str, str]:
    """(per-class report with the training images of each class beside its test images, confusion matrix)."""
    classes = tuple(final["classes"])
    text, _, cm = classification_summary(np.asarray(final["y_true"]), np.asarray(final["y_pred"]), classes)
    counts = final.get("train_counts")  # absent from a final.json written before it was recorded
    if counts and len(counts) == len(classes):
        test = np.bincount(np.asarray(final["y_true"], np.int64), minlength=len(classes))
        width = max(len(c) for c in classes)
        text = text.rstrip() + "\n\nimages per class (training / test)\n" + "\n".join(
            f"{c:>{width}}  {n:>7,} / {t:,}" for c, n, t in zip(classes, counts, test))
    return text, confusion_text(cm, classes)


def _latency_section(latency: dict | None) -> list[str]:
    """The winner's predicted latency (the study's --latency-table) beside the measured one, when comparable:
    on the table's machine and after its speed check (search.final.latency_check); else why not."""
    if not latency:
        return []
    scale = latency.get("scale", 1.0)
    head = (f"Latency ({latency['runtime']}, {latency['threads']} thread(s), batch 1): predicted "
            f"**{latency['predicted_ms']:.3f} ms** by the study's table (measured on {latency['table_machine']}"
            + (f"; rescaled by {scale:.3f}, the speed of its reference blocks measured on the search's machine)"
               if scale != 1 else ")"))
    if latency.get("error_pct") is not None:
        return [head + f", measured **{latency['measured_ms']:.3f} ms** here ({latency['error_pct']:+.1f} %; the "
                "machine's speed checked against the table's reference).", ""]
    if latency.get("same_machine") and latency.get("measured_ms"):
        return [head + f"; measured {latency['measured_ms']:.3f} ms here, **not comparable**: "
                + not_compared(latency) + ".", ""]
    return [head + "; the table is for another machine or runtime version, so no measurement here is compared.", ""]


def _deploy_section(deploy: dict | None) -> list[str]:
    """report.md's lines on the ONNX files (train.deploy's figures in final.json), or why there are none."""
    if not deploy:
        return []
    if "files" not in deploy:
        return ["### Deployment (ONNX)", "", f"No ONNX files: {deploy.get('skipped', 'not exported')} "
                "(`pip install -e \".[deploy]\"` adds them).", ""]
    kinds = [k for k in ("fp32", "int8") if k in deploy]
    rows = [{"model": "PyTorch (fp32)", "file": "best_model.pt", "test_acc": deploy["torch_acc"]}]
    rows += [{"model": f"ONNX {k}", "file": Path(deploy["files"][k]).name, "test_acc": deploy[k]["test_acc"],
              "size (KB)": f"{deploy[k]['size_kb']:,.1f}", "ms per image, batch 1": f"{deploy[k]['latency_ms_b1']:.3f}",
              "images/s, batch 256": f"{deploy[k]['images_per_s_b256']:,.0f}"} for k in kinds]
    f = deploy["fp32"]
    return ["### Deployment (ONNX)", "", _md_table(pd.DataFrame(rows)), "",
            f"Test accuracies of ONNX Runtime {deploy.get('onnxruntime', '')} on the {deploy['n_test']:,} test images the "
            "retrained net was scored on. "
            f"The fp32 file's logits are within {deploy['logit_max_abs_diff']:.1e} of PyTorch's on "
            f"{deploy['verified_images']} training images (allowed {deploy['logit_atol']:g}); opset {deploy['opset']}. "
            + (f"int8: {deploy['quantization']}. " if "quantization" in deploy else "")
            + f"Latency: median of single-image runs, and images/s at batch 256, on {f['cpu']} with "
              f"{f['threads']} thread(s). Input: N x 3 x 32 x 32 float32, RGB in [0, 1] minus MEAN, divided by STD "
              "(both in the file's metadata and in best_model.py).", ""]


def write_report(study: optuna.Study, out: Path, storage_url: str = "") -> dict[str, Path]:
    """Write leaderboard.csv, report.md and plots/*.png under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    settings = stored_settings(study)
    trials = study.get_trials(deepcopy=False)
    board = leaderboard(study)
    paths = {"leaderboard": out / "leaderboard.csv", "report": out / "report.md"}
    board.to_csv(paths["leaderboard"], index=False)
    rejected = rejected_fraction(trials)
    cost = (cost_name(settings.objectives) if settings else None) or "params"  # the front's cost axis
    budget_of = ({"params": settings.max_params, "macs": settings.max_macs, "latency_ms": settings.max_latency_ms}
                 if settings else {})
    cost = "latency_ms" if cost == "latency" else cost  # the leaderboard's column
    paths["plot_pareto"] = plots.plot_pareto(board, out / "plots" / "pareto.png", budget_of.get(cost), cost)
    paths["plot_history"] = plots.plot_history(board, out / "plots" / "history.png")
    baseline = random_rejection_rate(settings.rules, construction=settings.construction) if settings else None
    paths["plot_rejected"] = plots.plot_rejected(rejected, out / "plots" / "rejected.png", baseline)
    final = load_final(out)
    if final and final.get("study") != study.study_name:
        final = None
    if final:
        paths["plot_final"] = plots.plot_final(final["history"], out / "plots" / "final_curves.png")
    if final and final.get("compare"):
        paths["plot_compare"] = plots.plot_compare(final["compare"], out / "plots" / "compare.png")

    md = [f"# Architecture search: study `{study.study_name}`", ""]
    if storage_url:
        md += [f"Storage: `{storage_url}` (browse it: `{dashboard_command(storage_url)}`). "
               f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    md += _winner(board, trials, final, settings)
    md += _search_section(trials, settings, rejected, baseline)
    md += _front(board, settings, cost)
    md += _importance_section(study)
    md += _evidence(study, board, trials, settings)
    paths["report"].write_text("\n".join(md))
    return paths


def write_and_list(study: optuna.Study, out: Path, storage_url: str, final: dict | None) -> dict[str, Path]:
    """write_report, then print the path of each output (with the files of the final retrain `final`)."""
    paths = write_report(study, out, storage_url)
    if final:
        deployed = DEPLOY_FILES if "files" in (final.get("deploy") or {}) else ()
        paths.update({key: out / key for key in FINAL_FILES + deployed})
    for key, path in paths.items():
        print(f"{key}: {path}")
    return paths

def _trained_on(final: dict, settings) -> str:
    """Which training images the final retrain used, plainly: all of them, or the --subset-train subset."""
    subset = settings.subset_train if settings else None
    if subset:
        return (f"{final['n_train']:,} training images: only the --subset-train {subset:,} subset the search used, "
                "not the whole training set")
    return f"all {final['n_train']:,} training images"


def _winner(board: pd.DataFrame, trials: list, final: dict | None, settings=None) -> list[str]:
    """The retrained winner, or the best trial so far."""
    md: list[str] = []
    best = board[board.best]
    if final:
        g = Genome.from_json(final["genome"])
        chosen = len(best) and best.iloc[0].number != final["trial"] and not final.get("finalists")
        md += [f"## Trial {final['trial']}, retrained by request (the winner is trial {best.iloc[0].number})"
               if chosen else "## Winner", "",
               f"Trial {final['trial']}{' (preset ' + final['preset'] + ')' if final.get('preset') else ''}: "
               f"`{final['summary']}`", "",
               f"* **test accuracy {final['test_acc']:.4f}** on {final['n_test']:,} test images, evaluated once "
               f"after retraining from scratch for {plural(final['epochs'], 'epoch')} on {_trained_on(final, settings)}"
               + (f"; flip-TTA {final['test_acc_tta']:.4f}" if final.get("test_acc_tta") is not None else ""),
               *_seed_lines(final),
               f"* validation accuracy in the search: {final['val_acc']:.4f} (selection used only validation "
               + ("accuracy: this and the finalists' re-ranking below)" if final.get("finalists") else "accuracy)"),
               *([f"* retrained by request (`search.retrain --trial {final['trial']}`); the default winner is trial "
                  f"{best.iloc[0].number}"] if len(best) and best.iloc[0].number != final["trial"]
                 and not final.get("finalists") else []),
               f"* {final['params']:,} parameters, {final['macs'] / 1e6:.2f} M MACs per image, receptive field "
               f"{final['rf']} px" + (f", peak activations {final['peak_act']:,} elements per image"
                                       if "peak_act" in final else ""),
               "", "```", table(g), "```", ""]
        md += _finalists(final.get("finalists"))
        md += [f"* `--compare {name}` was left out: it has the winner's genome" for name in final.get("compare_dropped", [])]
        md += [f"* `--compare {alias}` is the same net as {name}: retrained once, listed as {name}"
               for alias, name in final.get("compare_same", {}).items()]
        md += _payoff(final)
        report_text, cm_text = _per_class(final)
        md += ["### Per-class report (test set)", "", "```", report_text.rstrip(), "```", "",
               "### Confusion matrix (rows: true class, columns: prediction)", "", "```", cm_text, "```", "",
               "### Final retrain", "", "![final retrain](plots/final_curves.png)", "",
               f"{final['train_seconds']:.1f} s of training ({final['images_per_s']:,.0f} images/s) on "
               f"{_device(final)}, {final['wall_seconds']:.1f} s wall; seed {final['seed']}, "
               f"batch {final['batch_size']}, peak lr {final['lr']}, augmentation {'on' if final['augment'] else 'off'}.", ""]
        md += _deploy_section(final.get("deploy")) + _latency_section(final.get("latency"))
    elif len(best):
        b = best.iloc[0]
        g = genome_of(next(t for t in trials if t.number == b.number))
        md += ["## Best trial so far (not retrained yet: run `python -m search.retrain`)", "",
               f"Trial {b.number}: `{b.summary}`, validation accuracy {b.val_acc:.4f}, {int(b.params):,} parameters",
               "", "```", table(g, analyze(g)), "```", ""]
    else:
        md += ["No completed trial yet.", ""]

    return md


def _finalists(f: dict | None) -> list[str]:
    """The --finalists re-ranking (search.finalists): each finalist's trial and re-ranked validation accuracy."""
    if not f:
        return []
    rows = [{"finalist": r["rank"], "trial": r["trial"], "trial val_acc": r["trial_val_acc"],
             f"re-ranked val_acc ({f['epochs']} ep)": r["val_acc"], "winner": "yes" if r["trial"] == f["winner"] else ""}
            for r in f["rows"]]
    return ["### Finalists re-ranked", "",
            f"The {plural(len(rows), 'best trial')} by validation accuracy, each retrained for "
            f"{plural(f['epochs'], 'epoch')} on the search's {f['n_train']:,} training images (seed {f['seed']}) "
            f"and scored on its {f['n_val']:,} validation images; the best re-ranked accuracy is the winner. "
            "The test set played no part.", "", _md_table(pd.DataFrame(rows)), ""]


def _seed_lines(final: dict) -> list[str]:
    """The winner's retrains from several seeds (--final-seeds), when there were several."""
    s = final.get("seeds") or {}
    if s.get("n", 1) < 2:
        return []
    accs = ", ".join(f"{a:.4f}" for a in s["test_accs"])
    return [f"* over {s['n']} seeds ({', '.join(map(str, s['seeds']))}): **test accuracy {s['mean']:.4f} +- "
            f"{s['std']:.4f}** (sample std; min {s['min']:.4f}, max {s['max']:.4f}; each: {accs}); the figure "
            f"above, the per-class report and the exported weights are seed {s['exported_seed']}'s run"]


def _payoff(final: dict) -> list[str]:
    """Did the search pay off? The winner and the --compare baselines under the same final recipe and seeds."""
    rows = final.get("compare") or []
    if not rows:
        return []
    n = rows[0]["n"]

    def acc(r: dict) -> str:
        return f"{r['mean']:.4f} +- {r['std']:.4f}" if r["std"] is not None else f"{r['mean']:.4f}"

    def diff(r: dict) -> str:
        v = r.get("vs_winner")
        if not v:
            return ""
        ci = f" [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]" if v["ci_low"] is not None else ""
        return f"{v['diff']:+.4f}{ci}"

    table_rows = [{"net": r["name"], "from": r["origin"] + (f" (breaks the rules: {r['breaks']})" if r.get("breaks") else ""),
                   "params": r["params"], "MACs (M)": f"{r['macs'] / 1e6:.2f}", "RF": r["rf"],
                   "search val_acc": r.get("val_acc"), f"test acc, mean +- std ({plural(n, 'seed')})": acc(r),
                   "min - max": f"{r['min']:.4f} - {r['max']:.4f}", "winner - net (95% CI)": diff(r),
                   "p": "" if not r.get("vs_winner") or r["vs_winner"]["p"] is None else f"{r['vs_winner']['p']:.3f}",
                   "verdict": (r.get("vs_winner") or {}).get("verdict", "")} for r in rows]
    test = "a paired t interval and test over the seeds (seed k of every net: the same data order, augmentations "\
           "and initialisation stream)" if n > 1 else "none: one seed each, so no difference here can be told from noise"
    return ["### Did the search pay off?", "",
            f"The winner and each baseline retrained with the same final recipe ({plural(final['epochs'], 'epoch')}, "
            f"same images) from the same {plural(n, 'seed')}, each tested once. Difference and interval: {test}. "
            "\"within noise\": the interval contains 0. How to read it: docs/search.md.", "",
            _md_table(pd.DataFrame(table_rows)), "", "![winner vs baselines](plots/compare.png)", ""]


def _search_section(trials: list, settings, rejected: list[bool], baseline: float | None) -> list[str]:
    """What the search did, and with which settings."""
    md: list[str] = []
    c = count(trials)
    epochs_cap = settings.trial_epochs if settings else 0
    budget = c.trained * epochs_cap
    md += ["## Search", "", _md_table(pd.DataFrame([{
        "trained": c.trained, "completed": c.completed, "pruned": c.pruned, "rejected (never trained)": c.rejected,
        "duplicates (not retrained)": c.duplicate,
        **({"screened out (never trained)": c.screened} if c.screened or (settings and settings.prescreen > 1) else {}),
        "failed": c.failed, **({"too large for the device": c.too_large} if c.too_large else {}),
        "epochs trained": c.epochs, "epochs without pruning": budget}])), ""]
    if budget:
        md += [f"Pruning saved {1 - c.epochs / budget:.0%} of the epochs: {c.epochs} trained instead of "
               f"{c.trained} x {epochs_cap} = {budget}.", ""]
    t = plots.thirds(rejected)
    if t:
        md += [f"Rejected fraction of the sampler's {len(rejected)} proposals: **{t[0]:.0%} in the first third, "
               f"{t[1]:.0%} in the last third** ("
               + (f"uniform random sampling: {baseline:.0%}; " if baseline is not None else "")
               + "TPE learns the infeasible region from the constraints).", ""]
    if settings:
        md += [f"Settings: dataset {settings.dataset}, objectives {settings.objectives}, "
               f"<= {settings.max_params:,} parameters, "
               + (f"<= {settings.max_macs:,} MACs per image, " if settings.max_macs else "")
               + (f"<= {settings.max_latency_ms:g} ms per image predicted by {settings.latency_table!r}, "
                  if settings.max_latency_ms else "")
               + f"RF >= {settings.min_rf}, "
               f"{plural(settings.trial_epochs, 'epoch')} per trial, validation split {settings.val_size}, "
               f"training subset {settings.subset_train or 'none'}, batch {settings.batch_size}, "
               f"peak lr {settings.lr}, augmentation {'on' if settings.augment else 'off'}, seed {settings.seed}"
               + (f", prescreen: each trained trial the best of {settings.prescreen} feasible proposals by "
                  f"{settings.proxy}" if settings.prescreen > 1 else "") + ".", "",
               "Training recipe, stored with the study (its trials and its final retrain train with it; "
               "`train.engine.TrainConfig`): " + ", ".join(f"{k} {v}" for k, v in settings.recipe) + ".", ""]
    return md


MIN_IMPORTANCE_TRIALS = 8  # completed trained trials before parameter importance says anything


def param_importance(study: optuna.Study) -> dict[str, float]:
    """Optuna's fANOVA importance evaluator (seeded) on the completed, trained trials' validation accuracy. Not
    Optuna 5's default (PED-ANOVA): on 30 made-up trials whose accuracy followed the dropout alone, the default
    ranked c1_depth first (0.23) and fANOVA the dropout (0.96; seen once, 2026-12-07, the made-up trials of
    tests/test_after_search.py). The trials' params are the choices their nets have (search space 3); rejected
    candidates, never trained, are left out (studies before 2026-12-07 told them COMPLETE with a placeholder 0).
    {} with too few trials."""
    done = [t for t in study.get_trials(deepcopy=False) if classify(t) == Outcome.COMPLETED]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}
    scratch = optuna.create_study(directions=study.directions)
    scratch.add_trials(done)
    try:
        return optuna.importance.get_param_importances(
            scratch, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=lambda t: t.values[0])
    except (RuntimeError, ValueError):  # e.g. no parameter shared by every trial
        return {}


def _importance_section(study: optuna.Study) -> list[str]:
    importance = param_importance(study)
    if not importance:
        return []
    rows = [{"parameter": k, "importance": round(v, 3)} for k, v in importance.items()]
    return ["### Parameter importance", "",
            "Optuna's fANOVA evaluator (`optuna.importance.FanovaImportanceEvaluator`, seed 0) on the completed "
            "trials' validation accuracy, over the choices their nets have (a trial's params are exactly those); a "
            "share, summing to 1. "
            "Descriptive: it says which choices the accuracies varied with in this study, not why.", "",
            _md_table(pd.DataFrame(rows)), ""]


def _front(board: pd.DataFrame, settings, cost: str) -> list[str]:
    """The Pareto front, the plots and the top 10."""
    md: list[str] = []
    front = board[board.pareto].sort_values(cost)[[c for c in ("number", "val_acc", "params", "macs", "latency_ms",
                                                                "peak_act", "rf", "summary") if c in board]]
    md += ["### Pareto front", "",
           f"Completed, feasible trials that no other beats on both validation accuracy and {COSTS[cost]} "
           + ("(the study's objectives). " if settings and cost_name(settings.objectives) else
              "(descriptive: this study optimises accuracy alone). ")
           + "Any of them can be exported or retrained with `--trial N`; peak activations are elements per "
             "image (x4: bytes at fp32).", "",
           _md_table(front) if len(front) else "none yet", "",
           f"![accuracy vs {COSTS[cost]}](plots/pareto.png)", "", "![optimisation history](plots/history.png)", "",
           "![rejected fraction](plots/rejected.png)", ""]
    trained = board[board.state.isin(["completed", "pruned"])]
    md += [f"### Top {min(10, len(trained))} of the {len(trained)} trained trials", "",
           "Completed trials first, by validation accuracy (`rank`), then pruned ones by their accuracy when "
           "stopped (after fewer epochs: not comparable, so not ranked).", ""]
    prescreened = board.proxy_score.notna().any()
    top = trained.head(10)[["rank", "state", "number", "val_acc", "params", "macs", "peak_act", "rf",
                                                       "epochs", "train_seconds",
                                                       *(["proxy_score", "proxy_rank"] if prescreened else []),
                                                       "summary", "preset"]]
    md += [_md_table(top) if len(top) else "none yet", "", "All trials: `leaderboard.csv`.", ""]

    return md


def _evidence(study: optuna.Study, board: pd.DataFrame, trials: list, settings) -> list[str]:
    """Time, runs, machines and seeds."""
    md: list[str] = []
    md += ["## Evidence", ""]
    trained = board[board.state.isin(["completed", "pruned"])]
    md += [f"* Trial training time: {trained.train_seconds.sum():,.1f} s over {len(trained)} trained trials "
           f"(mean throughput {trained.images_per_s.mean():,.0f} images/s)" if len(trained) else "* No training yet"]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        md += [f"* Search span: {min(starts):%Y-%m-%d %H:%M:%S} to {max(ends):%Y-%m-%d %H:%M:%S} "
               f"({(max(ends) - min(starts)).total_seconds():,.0f} s wall, all runs)"]
    for r in _runs(study):
        md += [f"* Run {r.get('started', '?')} on {r.get('host', '?')} (pid {r.get('pid', '?')}): "
               f"`{r.get('command', '')}`; device {_device(r)}, "
               f"{r.get('cpu', '')}, torch {r.get('torch', '')}, optuna {r.get('optuna', '')}, "
               f"python {r.get('python', '')}" + (f"; search took {r['seconds']:,.0f} s" if "seconds" in r else "")]
    md += [f"* Seeds: {settings.seed} for the validation split, sampler stream, and every training run" if settings
           else "", ""]
    return md


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m search.report", __doc__)
    add_study_args(p)
    p.add_argument("--out", default=None, help="output folder (default: the study's, as search.run stored it, else "
                   "results/<study>/)")
    args = p.parse_args(argv)
    study, url = open_existing(args)
    out = Path(recall(study, "out", args.out, RESULTS / study.study_name)[0])
    write_and_list(study, out, url, None)
    return 0


if __name__ == "__main__":
    from space.cli import run_cli
    run_cli(main, errors=ERRORS)
