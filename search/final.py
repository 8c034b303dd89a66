"""The final retrain: the winner, trained from scratch on every training image, tested once.

Selection is over validation accuracy only (search.trials.best_trial; in a multi-objective study the most
accurate member of the Pareto front), unless a trial is named (search.retrain --trial N, e.g. another
member of the front). The retrain is search.seedrun.retrain, the one retrain path: no validation split
(nothing is selected during it), a checkpoint every epoch in <out>/runs/ so that a crashed or interrupted
retrain resumes, and the test set evaluated after its last epoch, once.
It writes best_model.pt (state_dict, CPU tensors), best_model.py (standalone code + input normalisation),
best_genome.json and final.json (metrics, learning curves, test predictions for the report), and, with the
deploy extra installed, best_model.onnx and best_model.int8.onnx (train.deploy: verified against PyTorch,
evaluated and timed with ONNX Runtime; the figures go into final.json under "deploy").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from optuna.trial import FrozenTrial

from space import Genome, analyze
from space.export import export_code
from space.latency import LatencyTable, predict_latency
from space.machine import check_machine
from space.cli import plural
from train.deploy import DEPLOY_EXTRA, DeployError, cpu_name, deploy, missing
from train.files import write_json
from train.latency import net_latency

from .compare import check_final_seeds, compare_rows, final_seeds, resolve_entrants, seed_stats
from .context import Run
from .seedrun import load_model, retrain
from .record import TrialRecord
from .settings import SearchError
from .finalists import choose_winner
from .trials import FINALISTS_KEY, genome_of, val_acc
from .workers import SlotLock

__all__ = ["FINAL_JSON", "FINAL_FILES", "DEPLOY_FILES", "check_final", "describe_final", "retrain_best",
           "retrain_and_compare", "final_lock", "say_interrupted", "deploy_final", "load_final", "latency_check", "not_compared"]

FINAL_JSON = "final.json"
FINAL_FILES = ("best_model.py", "best_model.pt", "best_genome.json", FINAL_JSON)  # what a retrain leaves in out/
DEPLOY_FILES = ("best_model.onnx", "best_model.int8.onnx")  # and these, with the deploy extra


def load_final(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / FINAL_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def deploy_final(model: torch.nn.Module, run: Run, test_acc: float) -> dict:
    """best_model.onnx and best_model.int8.onnx in run.out and their figures (train.deploy), or, without
    the deploy extra, {"skipped": why} and one line saying which extra adds them."""
    absent = missing()
    if absent:
        why = f"{', '.join(absent)} not installed"
        run.log(f"no ONNX files ({why}): {DEPLOY_EXTRA} adds best_model.onnx and best_model.int8.onnx")
        for name in DEPLOY_FILES:  # an earlier retrain's files would not hold these weights
            (run.out / name).unlink(missing_ok=True)
        return {"skipped": why}
    try:
        return deploy(model, run.out / DEPLOY_FILES[0], run.data, test_acc, int8_path=run.out / DEPLOY_FILES[1],
                      log=run.log, seed=run.settings.seed)
    except DeployError as e:
        raise SearchError(f"ONNX export of the winner: {e}") from None


def _already_retrained(run: Run, key: list) -> dict | None:
    """final.json of run.out when it is this very retrain (study, trial, genome, epochs, n_train, n_test = key)
    and its weights exist, marked "reused" (not in the file; the caller reports the original times)."""
    done = load_final(run.out)
    if not (done and (run.out / "best_model.pt").exists()
            and [done.get(k) for k in ("study", "trial", "genome", "epochs", "n_train", "n_test")] == key):
        return None
    run.log(f"trial {key[1]} was already retrained for {plural(key[3], 'epoch')}: test accuracy "
            f"{done['test_acc']:.4f} (from {run.out / FINAL_JSON}, {done.get('finished', 'earlier')})")
    return {**done, "reused": True}


def retrain_best(run: Run, trial: FrozenTrial | None = None) -> dict:
    """Retrain the winner (`trial`, default search.finalists.choose_winner: the plan's trial, the best
    re-ranked finalist or the best trial) from the study's seed on run.data's training part
    (search.seedrun.retrain, the one retrain path), then write the winner's files: its weights, code, genome,
    ONNX files and final.json; returns final.json's record."""
    data, epochs = run.data, run.final.epochs
    trial = trial if trial is not None else choose_winner(run)
    genome = genome_of(trial)
    if genome.num_classes != data.num_classes:
        raise SearchError(f"trial {trial.number} has {genome.num_classes} classes but {data.name} has "
                          f"{data.num_classes}")
    run.out.mkdir(parents=True, exist_ok=True)
    done = _already_retrained(run, [run.name, trial.number, genome.to_json(), epochs, len(data.y_train),
                                    len(data.y_test)])
    if done:
        return done
    a = analyze(genome)
    run.log(f"final retrain of trial {trial.number} ({genome.summary()}; {a.params:,} params, val acc "
            f"{val_acc(trial):.4f}) for {plural(epochs, 'epoch')} on {len(data.y_train):,} images")
    seed = run.settings.seed
    done = retrain(run, genome, seed, f"trial {trial.number}")
    model = load_model(run, done)
    s = run.settings
    torch.save(model.state_dict(), run.out / "best_model.pt")  # the EMA weights, if any; CPU tensors
    (run.out / "best_model.py").write_text(export_code(genome, data.mean, data.std, s.max_params, s.min_rf, classes=data.classes))
    (run.out / "best_genome.json").write_text(genome.to_json() + "\n")
    record = {
        "study": run.name, "trial": trial.number, "preset": TrialRecord.of(trial).preset,
        "summary": genome.summary(), "genome": genome.to_json(), "params": a.params, "macs": a.macs, "rf": a.rf,
        "peak_act": a.peak_activations, "val_acc": val_acc(trial),
        **{k: done[k] for k in ("train_acc", "test_acc", "test_acc_tta", "test_loss", "n_train", "n_test", "epochs")},
        "status": "completed", **{k: done[k] for k in ("train_seconds", "images_per_s", "wall_seconds", "device",
                                                       "device_name")},
        "seed": seed, "batch_size": s.batch_size, "lr": s.lr, "augment": s.augment,
        "dataset": data.name, "classes": list(data.classes),
        # images per class the retrain trained on (imbalanced data shows here; the test counts are the report's support)
        "train_counts": np.bincount(data.y_train, minlength=data.num_classes).tolist(),
        "mean": [float(m) for m in data.mean],
        "std": [float(v) for v in data.std], "history": done["history"], "y_true": done["y_true"],
        "y_pred": done["y_pred"], "finished": done["finished"],
    }
    finalists = run.study.user_attrs.get(FINALISTS_KEY)
    if run.final.finalists > 1 and finalists:
        record["finalists"] = finalists
    record["deploy"] = deploy_final(model, run, done["test_acc"])
    if s.latency_table is not None:
        record["latency"] = latency_check(s.latency_table, genome, record["deploy"], run.log)
    write_json(run.out / FINAL_JSON, record)
    return record


def latency_check(table: LatencyTable, genome: Genome, deploy: dict, log: Callable[[str], None] = print) -> dict:
    """The winner's latency predicted by the study's table beside the latency measured here with the table's
    runtime (the deploy step's batch-1 median for ONNX Runtime, a fresh measurement for torch-cpu), compared
    only when the table was measured on this machine (same CPU name, threads and runtime version) and this
    machine passes the table's speed check (space.machine: its reference blocks within 15 % of the table's
    time, a --latency-rescale included): a same-named machine can run 2x faster, and a 2x miss is no check
    of the prediction."""
    predicted = predict_latency(genome, table).ms
    record = {"runtime": table.runtime, "threads": table.threads, "table_machine": table.machine,
              "predicted_ms": round(predicted, 4), "measured_ms": None, "error_pct": None, "scale": table.scale}
    kind = {"onnxruntime-fp32": "fp32", "onnxruntime-int8": "int8"}.get(table.runtime)
    same = (table.machine == cpu_name() and table.threads == (deploy.get("fp32", {}).get("threads", 1) if kind else 1)
            and (kind is None or table.data.get("versions", {}).get("onnxruntime") == deploy.get("onnxruntime")))
    if kind is not None and kind in deploy:
        record["measured_ms"] = deploy[kind]["latency_ms_b1"]
    elif kind is None:
        record["measured_ms"] = round(net_latency(genome, table.runtime, table.threads), 4)
    record["same_machine"] = bool(same)
    check = check_machine(table) if same else None
    record["machine_check"] = check.to_dict() if check is not None else None
    if same and check.comparable and record["measured_ms"]:
        record["error_pct"] = round((predicted - record["measured_ms"]) / record["measured_ms"] * 100, 1)
        log(f"latency ({table.runtime}): predicted {predicted:.3f} ms, measured {record['measured_ms']:.3f} ms "
            f"({record['error_pct']:+.1f} %)")
    elif check is not None and check.warning():
        log(check.warning())
        log(f"latency ({table.runtime}): predicted {predicted:.3f} ms; not compared with this machine's figure "
            f"({not_compared(record)})")
    else:
        log(f"latency ({table.runtime}): predicted {predicted:.3f} ms on {table.machine}; the table is for another "
            "machine or runtime version, so this machine's figure is not compared")
    return record


def not_compared(record: dict) -> str:
    """Why a prediction on the table's own CPU name is not set beside the measurement (report.md says it)."""
    check = record.get("machine_check") or {}
    if check.get("status") == "differs":
        return (f"the table's reference blocks take {check['ratio']:.2f}x its time on this machine, beyond 15 %: "
                "the prediction would be off by about that (search.run --latency-rescale scales it)")
    if check.get("status") == "no-reference":
        return "the table holds no reference measurement, so this machine's speed cannot be checked against it"
    return "the table is for another machine or runtime version"


def check_final(run: Run) -> None:
    """Before the search: the final phase can run as planned (--final-seeds in range, every --compare preset
    and study:NAME found; trial numbers are looked up when the search is done). SearchError otherwise."""
    check_final_seeds(run.final.seeds)
    resolve_entrants(run, [n for n in run.final.compare if not n.isdigit()], None)


def describe_final(run: Run) -> str:
    """The final phase's plan and cost, said before the search: what is retrained, how often, how long, and
    the time that takes at the speed the study's trials measured (when some have trained)."""
    plan, n = run.final, len(run.data.y_train)
    baselines = [e.name for e in resolve_entrants(run, [c for c in plan.compare if not c.isdigit()], None)]
    baselines += [f"trial {c}" for c in plan.compare if c.isdigit()]
    nets = 1 + len(baselines)
    image_epochs = nets * plan.seeds * plan.epochs * n
    extra = ""
    if plan.finalists > 1 and run.split is not None:
        image_epochs += plan.finalists * plan.epochs * len(run.split.y_train)
        extra = f" + {plural(plan.finalists, 'finalist')} re-ranked first"
    speeds = [TrialRecord.of(t).images_per_s for t in run.study.get_trials(deepcopy=False)]
    speeds = [s for s in speeds if s]
    cost = (f"about {image_epochs / (sum(speeds) / len(speeds)) / 60:,.0f} min at the trials' "
            f"{sum(speeds) / len(speeds):,.0f} images/s" if speeds else "its time is estimated once trials have trained")
    what = "the winner" + (f" + {plural(len(baselines), 'baseline')} ({', '.join(baselines)})" if baselines else "")
    return (f"final phase: {what} x {plural(plan.seeds, 'seed')} x {plural(plan.epochs, 'epoch')} on {n:,} images"
            f"{extra} = {image_epochs:,} image-epochs, {cost}"
            + ("; --compare none keeps it to the winner" if baselines else "") + "; --no-final skips it")


def say_interrupted(run: Run) -> int:
    """What a Ctrl-C during the final phase leaves and what to run next, on stderr; the exit status, 130."""
    print(f"interrupted during the final retrain: the finished runs and the last finished epoch are in "
          f"{run.out}/runs/; run the same command to resume", file=sys.stderr)
    return 130


def final_lock(run: Run) -> SlotLock:
    """The lock of a study's final phase into its output folder, shared by every process on this machine."""
    return SlotLock(f"final\n{run.storage}\n{run.name}\n{run.out.resolve()}")


def retrain_and_compare(run: Run) -> dict:
    """The final phase, once per study and output folder at a time: a second process that finishes the same
    study (two search.run, or a search.retrain beside it) waits for the first, then reuses its runs."""
    lock = final_lock(run)
    if not lock.acquire(blocking=False):
        run.log(f"the final phase of study {run.name} into {run.out}/ is running in another process on this "
                "machine: waiting for it, then reusing its finished runs")
        lock.acquire()
    try:
        return _retrain_and_compare(run)
    finally:
        lock.release()


def _retrain_and_compare(run: Run) -> dict:
    """retrain_best (the first seed: its weights are the exported ones), then the winner's other seeds and
    each --compare baseline from every seed, all through search.seedrun.retrain under the same recipe;
    final.json gains "seeds" (the winner's test accuracy per seed, mean, std, min, max) and "compare" (the
    table's rows)."""
    plan, log = run.final, run.log
    seed_list = final_seeds(run.settings, plan.seeds)
    entrants = resolve_entrants(run, list(plan.compare), None)  # checked before any finalist trains
    chosen = choose_winner(run)
    winner = genome_of(chosen)
    dropped = [e.name for e in entrants if e.genome == winner]  # the winner itself is no baseline: said, not hidden
    for name in dropped:
        log(f"compare: {name} has the winner's genome (trial {chosen.number}): it is the winner, not a baseline")
    entrants = [e for e in entrants if e.genome != winner]
    same = {alias: e.name for e in entrants for alias in e.aliases}
    for alias, name in same.items():
        log(f"compare: {alias} is the same net as {name}: retrained once, listed as {name}")
    if entrants:  # before the first epoch: what the comparison will cost
        log(f"compare: {', '.join(e.name for e in entrants)}, each retrained from "
            f"{plural(len(seed_list), 'seed')} ({', '.join(map(str, seed_list))}) like the winner")
    record = retrain_best(run, chosen)
    reused = record.pop("reused", False)
    label = f"winner (trial {record['trial']})"
    runs = {"winner": [{"seed": seed_list[0], "test_acc": record["test_acc"]}]
            + [retrain(run, winner, s, label) for s in seed_list[1:]]}
    for e in entrants:
        runs[e.name] = [retrain(run, e.genome, s, e.name) for s in seed_list]
    accs = [r["test_acc"] for r in runs["winner"]]
    record["seeds"] = {"seeds": seed_list, "test_accs": accs, **seed_stats(accs), "exported_seed": seed_list[0]}
    record["compare"] = compare_rows(record, entrants, runs) if entrants else []
    record["compare_dropped"] = dropped
    record["compare_same"] = same
    fresh = any(not r.get("reused") for rs in runs.values() for r in rs if "label" in r)  # retrain's records
    write_json(run.out / FINAL_JSON, record)
    if len(seed_list) > 1:
        s = record["seeds"]
        log(f"winner over {len(seed_list)} seeds: test accuracy {s['mean']:.4f} +- {s['std']:.4f} "
            f"(min {s['min']:.4f}, max {s['max']:.4f}); the exported weights are seed {seed_list[0]}'s")
    for row in record["compare"][1:]:
        v = row["vs_winner"]
        ci = f" [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]" if v["ci_low"] is not None else ""
        log(f"vs {row['name']}: {row['mean']:.4f} mean test accuracy; winner - {row['name']} = {v['diff']:+.4f}"
            f"{ci} ({v['test']}): {v['verdict']}")
    return {**record, **({"reused": True} if reused and not fresh else {})}
