"""One retrain: a genome trained from one seed under the study's final recipe, scored once on the held-out part.

The only place after the search that trains a net. The final retrain is this plus export and deploy
(search.final); each `--final-seeds` seed and each `--compare` baseline is this too (search.compare). The
held-out part is the test set for those; a caller may hand it other data (e.g. the search's split, whose
held-out part is the validation images) and gets the same run scored there.

Every run is cached under <out>/runs/ by what it trains and is scored on (genome, recipe with seed and
epochs, data name and sizes: `run_key`): `<key>.pt` is its checkpoint while it trains (a crash or Ctrl-C
loses at most the epoch in progress; the same command resumes it), `<key>.model.pt` the weights it ends
with (the EMA's, BatchNorm refreshed where the recipe says so) and `<key>.json` its record, written last:
a run with a record is finished and is read back, never trained again.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from space import Genome, build
from space.cli import plural
from train.data import ImageData
from train.engine import load_weights, resolve_device, train
from train.files import finite_or_none, write_atomic, write_json
from train.testset import score_test_set

from .context import Run
from .settings import SearchError

__all__ = ["RUNS_DIR", "run_key", "retrain", "load_model"]

RUNS_DIR = "runs"  # under the output folder


def run_key(genome: Genome, fingerprint: str, data: ImageData) -> str:
    """What a run trains and is scored on, as a file name: a changed recipe, seed or image set is another run."""
    ident = json.dumps([genome.to_json(), fingerprint, data.name, len(data.y_train), len(data.y_test)])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def retrain(run: Run, genome: Genome, seed: int, label: str, data: ImageData | None = None) -> dict:
    """Train `genome` from `seed` for the final plan's epochs under the study's recipe on data's training part
    (default: run.data), score data's held-out part once, and return the run's record: test_acc (plain; on
    other data than run.data, e.g. the search split, its held-out part's accuracy: "held_out" says which),
    test_acc_tta (None where training does not flip), test_loss, history, y_true / y_pred, seconds, "key"
    (the cache file stem) and "reused" when it was read back from the cache."""
    held_out = "test" if data is None or data is run.data else "validation"
    data = data if data is not None else run.data
    epochs = run.final.epochs
    config = run.settings.train_config(epochs, run.device, eval_every=-1, progress=run.epoch_lines,
                                        progress_bar=run.bar, seed=seed)
    key = run_key(genome, config.fingerprint(), data)
    folder = run.out / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    done = _read_back(folder / f"{key}.json")
    if done is not None:
        run.log(f"{label}, seed {seed}: {held_out} accuracy {done['test_acc']:.4f} (finished earlier, "
                f"{folder / key}.json)")
        return {**done, "key": key, "reused": True}
    run.log(f"{label}: retraining from seed {seed} for {plural(epochs, 'epoch')} on {len(data.y_train):,} images")
    t0 = time.time()
    try:  # eval_every=-1: never evaluated while training; the held-out part is scored once, below
        result = train(genome, replace(config, checkpoint=str(folder / f"{key}.pt")), data)
    except ValueError as e:  # e.g. a checkpoint of another run in its place
        raise SearchError(f"retrain of {label} (seed {seed}): {e}") from None
    if result.status != "completed":
        raise SearchError(f"retrain of {label} (seed {seed}) {result.status}: {result.message}")
    device = resolve_device(result.device)
    scores = score_test_set(result.model, data, device)  # float32, as the exported weights ship
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    write_atomic(folder / f"{key}.model.pt", lambda tmp: torch.save(state, tmp))
    record = {"label": label, "genome": genome.to_json(), "seed": seed, "epochs": epochs, "held_out": held_out,
              "test_acc": scores.acc, "test_acc_tta": scores.acc_tta if config.tta else None,
              "test_loss": scores.loss, "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
              "train_acc": result.history[-1].train_acc, "train_seconds": round(result.train_seconds, 2),
              "images_per_s": round(result.images_per_s, 1), "wall_seconds": round(time.time() - t0, 2),
              "device": result.device,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "history": [{k: finite_or_none(v) for k, v in asdict(h).items()} for h in result.history], "y_true": scores.labels.tolist(),
              "y_pred": scores.pred.tolist(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(folder / f"{key}.json", record)  # last: from here on the run is finished
    (folder / f"{key}.pt").unlink(missing_ok=True)  # its checkpoint is no longer needed
    tta = f"flip-TTA {record['test_acc_tta']:.4f}; " if record["test_acc_tta"] is not None else ""
    run.log(f"{label}, seed {seed}: {held_out} accuracy {scores.acc:.4f} ({tta}{len(data.y_test):,} images, "
            "evaluated once)")
    return {**record, "key": key}


def _read_back(path: Path) -> dict | None:
    try:
        done = json.loads(path.read_text())
        float(done["test_acc"])
        return done
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_model(run: Run, record: dict) -> torch.nn.Module:
    """The net a finished run ended with, from its cached weights; SearchError if they are gone."""
    path = run.out / RUNS_DIR / f"{record['key']}.model.pt"
    if not path.exists():
        raise SearchError(f"the weights of {record['label']} (seed {record['seed']}) are not in {path}; delete "
                          f"{path.with_suffix('').with_suffix('.json')} to retrain it")
    net = build(Genome.from_json(record["genome"]))
    net.load_state_dict(load_weights(path))
    return net.eval()
