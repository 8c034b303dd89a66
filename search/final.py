"""The final retrain: the winner, trained from scratch on every training image, tested once.

Selection is over validation accuracy only (search.trials.best_trial; in a multi-objective study the most
accurate member of the Pareto front), unless a trial is named (search.retrain --trial N, e.g. another
member of the front). The retrain uses no validation
split (nothing is selected during it), checkpoints every epoch to <out>/final_checkpoint.pt so that a
crashed or interrupted retrain resumes, and evaluates the test set after its last epoch, once.
It writes best_model.pt (state_dict, CPU tensors), best_model.py (standalone code + input normalisation),
best_genome.json and final.json (metrics, learning curves, test predictions for the report), and, with the
deploy extra installed, best_model.onnx and best_model.int8.onnx (train.deploy: verified against PyTorch,
evaluated and timed with ONNX Runtime; the figures go into final.json under "deploy").
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import optuna
import torch

from space import Genome, analyze
from space.export import export_code
from space.latency import LatencyTable, predict_latency
from space.cli import plural
from train.data import ImageData
from train.engine import resolve_device, train, tta_applies
from train.files import finite_or_none, write_json
from train.testset import score_test_set

from .compare import compare_rows, final_seeds, resolve_entrants, seed_run, seed_stats
from .settings import SearchError, SearchSettings
from .trials import genome_of, pick_trial, val_acc

__all__ = ["FINAL_JSON", "CHECKPOINT", "FINAL_FILES", "DEPLOY_FILES", "retrain_best", "retrain_and_compare",
           "deploy_final", "load_final", "latency_check"]

FINAL_JSON = "final.json"
CHECKPOINT = "final_checkpoint.pt"
FINAL_FILES = ("best_model.py", "best_model.pt", "best_genome.json", FINAL_JSON)  # what a retrain leaves in out/
DEPLOY_FILES = ("best_model.onnx", "best_model.int8.onnx")  # and these, with the deploy extra


def load_final(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / FINAL_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _claim_checkpoint(out: Path, owner: dict, log: Callable[[str], None]) -> Path:
    """The checkpoint path; an earlier retrain's checkpoint of another trial or schedule is moved aside."""
    ckpt, meta = out / CHECKPOINT, out / "final_checkpoint.json"
    if ckpt.exists():
        try:
            previous = json.loads(meta.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != owner:
            aside = out / f"final_checkpoint.{int(time.time())}.pt"
            os.replace(ckpt, aside)
            log(f"moved the checkpoint of another retrain aside to {aside}")
    write_json(meta, owner)
    return ckpt


def deploy_final(model: torch.nn.Module, out: Path, data: ImageData, test_acc: float, seed: int,
                 log: Callable[[str], None] = print) -> dict:
    """best_model.onnx and best_model.int8.onnx under `out` and their figures (train.deploy), or, without
    the deploy extra, {"skipped": why} and one line saying which extra adds them."""
    from train.deploy import DEPLOY_EXTRA, DeployError, deploy, missing

    absent = missing()
    if absent:
        why = f"{', '.join(absent)} not installed"
        log(f"no ONNX files ({why}): {DEPLOY_EXTRA} adds best_model.onnx and best_model.int8.onnx")
        for name in DEPLOY_FILES:  # an earlier retrain's files would not hold these weights
            (out / name).unlink(missing_ok=True)
        return {"skipped": why}
    try:
        return deploy(model, out / DEPLOY_FILES[0], data, test_acc, int8_path=out / DEPLOY_FILES[1], log=log,
                      seed=seed)
    except DeployError as e:
        raise SearchError(f"ONNX export of the winner: {e}") from None


def _already_retrained(out: Path, key: list, log: Callable[[str], None]) -> dict | None:
    """final.json of `out` when it is this very retrain (study, trial, genome, epochs, n_train, n_test = key)
    and its weights exist, marked "reused" (not in the file; the caller reports the original times)."""
    done = load_final(out)
    if not (done and (out / "best_model.pt").exists()
            and [done.get(k) for k in ("study", "trial", "genome", "epochs", "n_train", "n_test")] == key):
        return None
    log(f"trial {key[1]} was already retrained for {plural(key[3], 'epoch')}: test accuracy "
        f"{done['test_acc']:.4f} (from {out / FINAL_JSON}, {done.get('finished', 'earlier')})")
    return {**done, "reused": True}


def retrain_best(study: optuna.Study, settings: SearchSettings, data: ImageData, out: Path, epochs: int,
                 device: str = "auto", progress: bool = False, log: Callable[[str], None] = print,
                 trial_number: int | None = None, bar: bool = True) -> dict:
    """Retrain the study's best trial (or trial `trial_number`) on data's training part, test on its test
    part; returns final.json. `progress`: a line per epoch; `bar`: with it, a tqdm bar per epoch."""
    trial = pick_trial(study, trial_number, trained=True)
    genome = genome_of(trial)
    if genome.num_classes != data.num_classes:
        raise SearchError(f"trial {trial.number} has {genome.num_classes} classes but {data.name} has "
                          f"{data.num_classes}")
    out.mkdir(parents=True, exist_ok=True)
    done = _already_retrained(out, [study.study_name, trial.number, genome.to_json(), epochs, len(data.y_train),
                                    len(data.y_test)], log)
    if done:
        return done
    config = settings.train_config(epochs, device, eval_every=-1, progress=progress, progress_bar=bar)
    owner = {"study": study.study_name, "trial": trial.number, "genome": genome.to_json(),
             "config": config.fingerprint(), "n_train": int(len(data.y_train))}
    config = replace(config, checkpoint=str(_claim_checkpoint(out, owner, log)))
    a = analyze(genome)
    log(f"final retrain of trial {trial.number} ({genome.summary()}; {a.params:,} params, val acc "
        f"{val_acc(trial):.4f}) for {plural(epochs, 'epoch')} on {len(data.y_train):,} images")
    t0 = time.time()
    try:  # eval_every=-1: train() never evaluates, so the test set is looked at exactly once, below
        result = train(genome, config, data)
    except ValueError as e:  # e.g. a checkpoint from an incompatible run
        raise SearchError(f"final retrain: {e}") from None
    if result.status != "completed":
        raise SearchError(f"final retrain of trial {trial.number} {result.status}: {result.message}")
    dev = resolve_device(result.device)
    # The one look at the test set: predictions give the accuracy and the per-class report.
    scores = score_test_set(result.model, data, dev)  # float32, as best_model.pt and the ONNX files ship
    # flip-TTA only where training flipped the images (not digits: a mirrored 2 is no 2)
    test_acc, test_acc_tta = scores.acc, (scores.acc_tta if tta_applies(settings.augment) else None)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}  # EMA weights, if any
    torch.save(state, out / "best_model.pt")
    (out / "best_model.py").write_text(export_code(genome, data.mean, data.std, settings.max_params, settings.min_rf))
    (out / "best_genome.json").write_text(genome.to_json() + "\n")
    record = {
        "study": study.study_name, "trial": trial.number, "preset": trial.user_attrs.get("preset"),
        "summary": genome.summary(), "genome": genome.to_json(), "params": a.params, "macs": a.macs, "rf": a.rf,
        "peak_act": a.peak_activations, "val_acc": val_acc(trial), "train_acc": result.history[-1].train_acc,
        "test_acc": test_acc, "test_acc_tta": test_acc_tta, "test_loss": scores.loss, "n_train": int(len(data.y_train)),
        "n_test": int(len(data.y_test)), "epochs": epochs, "status": result.status,
        "train_seconds": round(result.train_seconds, 2), "images_per_s": round(result.images_per_s, 1),
        "wall_seconds": round(time.time() - t0, 2), "device": result.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "seed": settings.seed, "batch_size": settings.batch_size, "lr": settings.lr, "augment": settings.augment,
        "dataset": data.name, "classes": list(data.classes), "mean": [float(m) for m in data.mean],
        "std": [float(s) for s in data.std],
        "history": [{k: finite_or_none(v) for k, v in asdict(h).items()} for h in result.history],  # NaN: null
        "y_true": scores.labels.tolist(), "y_pred": scores.pred.tolist(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tta = f"flip-TTA {test_acc_tta:.4f}; " if test_acc_tta is not None else ""
    log(f"test accuracy {test_acc:.4f} ({tta}{len(data.y_test):,} images, evaluated once)")
    record["deploy"] = deploy_final(result.model, out, data, test_acc, settings.seed, log)
    if settings.latency_table is not None:
        record["latency"] = latency_check(settings.latency_table, genome, record["deploy"], log)
    write_json(out / FINAL_JSON, record)
    return record


def latency_check(table: LatencyTable, genome: Genome, deploy: dict, log: Callable[[str], None] = print) -> dict:
    """The winner's latency predicted by the study's table beside the latency measured here with the table's
    runtime (the deploy step's batch-1 median for ONNX Runtime, a fresh measurement for torch-cpu), compared
    only when the table was measured on this machine (same CPU, threads and runtime version)."""
    from train.deploy import cpu_name

    predicted = predict_latency(genome, table).ms
    record = {"runtime": table.runtime, "threads": table.threads, "table_machine": table.machine,
              "predicted_ms": round(predicted, 4), "measured_ms": None, "error_pct": None}
    kind = {"onnxruntime-fp32": "fp32", "onnxruntime-int8": "int8"}.get(table.runtime)
    same = (table.machine == cpu_name() and table.threads == (deploy.get("fp32", {}).get("threads", 1) if kind else 1)
            and (kind is None or table.data.get("versions", {}).get("onnxruntime") == deploy.get("onnxruntime")))
    if kind is not None and kind in deploy:
        record["measured_ms"] = deploy[kind]["latency_ms_b1"]
    elif kind is None:
        from train.latency import net_latency
        record["measured_ms"] = round(net_latency(genome, table.runtime, table.threads), 4)
    record["same_machine"] = bool(same)
    if same and record["measured_ms"]:
        record["error_pct"] = round((predicted - record["measured_ms"]) / record["measured_ms"] * 100, 1)
        log(f"latency ({table.runtime}): predicted {predicted:.3f} ms, measured {record['measured_ms']:.3f} ms "
            f"({record['error_pct']:+.1f} %)")
    else:
        log(f"latency ({table.runtime}): predicted {predicted:.3f} ms on {table.machine}; the table is for another "
            "machine or runtime version, so this machine's figure is not compared")
    return record


def retrain_and_compare(study: optuna.Study, settings: SearchSettings, data: ImageData, out: Path, epochs: int,
                        device: str = "auto", progress: bool = False, log: Callable[[str], None] = print,
                        trial_number: int | None = None, bar: bool = True, seeds: int = 1,
                        compare: Sequence[str] = (), other_storage=None) -> dict:
    """retrain_best (the first seed: its weights are the exported ones), then the winner's other `seeds`
    and each --compare baseline from every seed, under the same recipe (search.compare); final.json gains
    "seeds" (the winner's test accuracy per seed, mean, std, min, max) and "compare" (the table's rows)."""
    seed_list = final_seeds(settings, seeds)
    winner = genome_of(pick_trial(study, trial_number, trained=True))
    entrants = resolve_entrants(list(compare), study, settings, winner, data.num_classes, other_storage)
    if entrants:  # before the first epoch: what the comparison will cost
        log(f"compare: {', '.join(e.name for e in entrants)}, each retrained from "
            f"{plural(len(seed_list), 'seed')} ({', '.join(map(str, seed_list))}) like the winner")
    record = retrain_best(study, settings, data, out, epochs, device, progress, log, trial_number, bar)
    reused = record.pop("reused", False)
    kw = dict(log=log, progress=progress, bar=bar)
    label = f"winner (trial {record['trial']})"
    runs = {"winner": [{"seed": seed_list[0], "test_acc": record["test_acc"]}]
            + [seed_run(winner, settings, data, epochs, device, s, out, label, **kw) for s in seed_list[1:]]}
    for e in entrants:
        runs[e.name] = [seed_run(e.genome, settings, data, epochs, device, s, out, e.name, **kw) for s in seed_list]
    accs = [r["test_acc"] for r in runs["winner"]]
    record["seeds"] = {"seeds": seed_list, "test_accs": accs, **seed_stats(accs), "exported_seed": seed_list[0]}
    record["compare"] = compare_rows(record, entrants, runs) if entrants else []
    fresh = any(not r.get("reused") for rs in runs.values() for r in rs if "label" in r)  # seed_run's records
    write_json(out / FINAL_JSON, record)
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
