"""One training run: `train(genome_or_model, config, data, on_epoch=...) -> TrainResult`.

Used by the search (brief runs scored on a validation split, stopped early through `on_epoch`) and by
the final retrain (long runs, checkpointed and resumable). It knows nothing about Optuna.

Recipe (the seeds found OneCycle essential): SGD with Nesterov momentum, OneCycleLR stepped per batch
(its warm-up is the first `pct_start` of the steps), weight decay except on BN and bias parameters, which
train at a 4x higher peak lr, label smoothing, an exponential moving average (EMA) of the weights that is
what gets evaluated and returned, and an augmentation schedule that lowers the shift-scale-rotate and
cutout probabilities linearly over the run, from a strength that grows with the run's length
(TrainConfig.augment_strength). Flip test-time augmentation is an evaluation option reported beside the
plain accuracy. The defaults were chosen on a validation split (results/benchmarks/recipe/recipe_cpu.md). On
CUDA: bf16 autocast (where the GPU has bf16), channels_last, non-blocking copies, optional torch.compile. Data stays uint8 until
the on-device augmentation (train.loader.DeviceLoader).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from space import build

from .augment import AugmentConfig
from .data import ImageData
from .device import resolve_device, synchronize, use_bf16
from .files import write_atomic
from .loader import DeviceLoader
from .recipe import OWN, RECIPE_FIELDS, RUNS, SHAPES, Recipe, before_values

__all__ = ["TrainError", "CheckpointError", "TrainConfig", "EpochStats", "TrainResult", "train", "evaluate",
           "predict", "predict_images", "resolve_device", "make_optimizer", "with_overrides", "MIN_STEPS",
           "WeightEMA", "refresh_bn", "augment_for_epoch", "tta_accuracy", "tta_applies", "load_weights",
           "RECIPE_FIELDS", "rng_states", "restore_rng_states"]


MIN_STEPS = 4  # optimizer steps a OneCycle schedule needs: warm-up and annealing of at least one step each


class TrainError(ValueError):
    """A run that cannot start as asked: too few steps, or a checkpoint of another run in its place."""


@dataclass(frozen=True)
class TrainConfig(Recipe):
    """A whole run: its Recipe (train.recipe) plus its size, seed, and how it runs."""

    # The run's own settings, each tagged (train.recipe.OWN) as SHAPES (changes the result: in the fingerprint)
    # or RUNS (only how it runs: not in the fingerprint). A field without a tag fails the tests.
    epochs: int = field(default=30, metadata=SHAPES)
    batch_size: int = field(default=128, metadata=SHAPES)  # images per step (train.defaults sets it per dataset)
    # OneCycle peak learning rate at that batch. Only a bare TrainConfig gets 0.1 (it is in the fingerprints
    # of older runs, so it stays); every command takes its lr from train.defaults (cifar10: 0.2 at batch 128).
    lr: float = field(default=0.1, metadata=SHAPES)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig, metadata=SHAPES)  # None: no augmentation
    # also report flip-TTA accuracy (mean logits of the image and its mirror) beside the plain one
    tta: bool = field(default=True, metadata=RUNS)
    device: str = field(default="auto", metadata=RUNS)  # "auto" picks cuda > mps > cpu
    # NHWC activations: ~2x faster convs on CPU and tensor cores on GPU
    channels_last: bool = field(default=True, metadata=SHAPES)
    amp: bool = field(default=True, metadata=SHAPES)  # bf16 autocast, on CUDA only
    compile: bool = field(default=False, metadata=RUNS)  # torch.compile: pays off only for long runs
    # torch.compile's mode; "reduce-overhead": CUDA graphs of forward + backward
    compile_mode: str = field(default="default", metadata=RUNS)
    seed: int = field(default=0, metadata=SHAPES)
    eval_batch_size: int = field(default=1024, metadata=RUNS)
    # epochs between evaluations of data's held-out part; 0: only after the last epoch; -1: never (the caller
    # evaluates once itself, e.g. the final retrain's single look at the test set)
    eval_every: int = field(default=1, metadata=RUNS)
    # path; written every `checkpoint_every` epochs, resumed from if present
    checkpoint: str | None = field(default=None, metadata=RUNS)
    checkpoint_every: int = field(default=1, metadata=RUNS)  # epochs
    progress: bool = field(default=False, metadata=RUNS)  # a line per epoch, and a tqdm bar per epoch if progress_bar
    # with progress: also the tqdm bar (command lines: only on a terminal)
    progress_bar: bool = field(default=True, metadata=RUNS)
    # with progress: the line per epoch (off where the caller prints its own: search trials)
    epoch_lines: bool = field(default=True, metadata=RUNS)
    # what the progress lines call data's held-out part ("test" when it is the test set)
    held_out: str = field(default="val", metadata=RUNS)
    # steps between non-finite-loss checks, each a host sync that drains the GPU's queue; 0: once per epoch
    # only, when the epoch's loss is read anyway (a diverged run wastes <= 1 epoch)
    nan_check_every: int = field(default=0, metadata=RUNS)

    def augment_strength(self) -> float:
        """The multiplier at the first epoch: augment_start, or the run-length rule when it is None."""
        if self.augment_start is not None:
            return self.augment_start
        return min(1.0, self.epochs / self.augment_full_epochs)

    def fingerprint(self) -> str:
        """Hash of the settings that change the result (not device, progress or checkpoint place)."""
        runs_only = {f.name for f in fields(self) if f.metadata.get(OWN) == RUNS[OWN]}
        d = {k: v for k, v in asdict(self).items() if k not in runs_only}
        for k, default in before_values().items():  # settings added later hash as before while at that value
            if d.get(k) == default:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def recipe(self) -> dict[str, Any]:
        """How this config trains, apart from the run's length, batch, peak lr and seed: the RECIPE_FIELDS by
        name and, with augmentation on, the AugmentConfig's fields as 'augment.NAME'. Plain JSON values."""
        d: dict[str, Any] = {k: getattr(self, k) for k in RECIPE_FIELDS}
        if self.augment is not None:
            d.update({f"augment.{k}": v for k, v in asdict(self.augment).items()})
        return d

    def with_recipe(self, recipe: dict[str, Any]) -> TrainConfig:
        """A copy trained by `recipe` (as from .recipe()); the augmentation stays off if it is off here.
        Unknown names raise ValueError: a recipe stored by a later version must not be half-applied."""
        unknown = recipe.keys() - set(RECIPE_FIELDS) - {f"augment.{f.name}" for f in fields(AugmentConfig)}
        if unknown:
            raise ValueError(f"unknown recipe settings: {', '.join(sorted(unknown))}")
        augment = {k.removeprefix("augment."): v for k, v in recipe.items() if k.startswith("augment.")}
        config = replace(self, **{k: v for k, v in recipe.items() if not k.startswith("augment.")})
        if config.augment is not None and augment:
            config = replace(config, augment=replace(config.augment, **augment))
        return config


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction, on augmented training batches
    val_loss: float  # on data's held-out part (validation split in the search, test set in a final run)
    val_acc: float
    lr: float  # at the end of the epoch
    seconds: float  # training time of the epoch, evaluation excluded
    images_per_s: float  # training throughput
    val_acc_tta: float = float("nan")  # flip-TTA accuracy on the held-out part (NaN: not evaluated)


@dataclass
class TrainResult:
    status: str  # "completed", "stopped" (on_epoch asked to stop) or "diverged" (non-finite loss)
    history: list[EpochStats]
    model: nn.Module
    message: str = ""
    device: str = ""
    resumed_epochs: int = 0  # epochs taken from a checkpoint rather than trained in this call
    # Set by a caller that ran it again after the device ran out of memory: how, and after what error
    # (search.memory's retry alone on the device or at half the batch); None: trained at the first try.
    oom_retry: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def val_acc(self) -> float:
        """Accuracy on data's held-out part after the last epoch run."""
        return self.history[-1].val_acc if self.history else float("nan")

    @property
    def train_seconds(self) -> float:
        return sum(h.seconds for h in self.history)

    @property
    def images_per_s(self) -> float:
        return float(np.mean([h.images_per_s for h in self.history])) if self.history else 0.0


def _as_model(genome_or_model) -> nn.Module:
    if isinstance(genome_or_model, nn.Module):
        return genome_or_model
    return build(genome_or_model)


def _identity(genome_or_model) -> str:
    g = getattr(genome_or_model, "genome", genome_or_model)
    return g.to_json() if hasattr(g, "to_json") else type(g).__name__


class CheckpointError(TrainError):
    """A checkpoint or weights file that is not what it claims, or belongs to another run; one-line message."""


def load_weights(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """torch.load with weights_only=True (no code in the file is run); anything else is a CheckpointError."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not a tensor checkpoint
        # torch's own message runs over many lines of advice about weights_only; the exception type suffices
        raise CheckpointError(f"{path} is not a readable checkpoint or weights file ({type(e).__name__}; only "
                              "tensors and plain containers are loaded); delete it or choose another --out") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint or state_dict")
    return state


@torch.no_grad()
def predict(model: nn.Module, loader: DeviceLoader, device: torch.device, amp: bool = True, flip: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits on the CPU, labels, mean cross-entropy loss) over a non-augmenting loader.
    flip=True predicts the horizontally mirrored images (the second half of flip-TTA)."""
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        if flip:
            x = x.flip(3)
        with torch.autocast(device.type, torch.bfloat16, enabled=use_bf16(device, amp)):
            outs.append(model(x).float())
        ys.append(y)
    logits, labels = torch.cat(outs), torch.cat(ys)
    return logits.cpu(), labels.cpu(), float(F.cross_entropy(logits, labels))


def predict_images(model: nn.Module, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device | str = "cpu",
                   batch_size: int = 1024, amp: bool = True, flip: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits on the CPU, labels, mean cross-entropy loss) of a model on uint8 HWC images, in order."""
    device = torch.device(device)
    loader = DeviceLoader(x, y, mean, std, batch_size, device, train=False, augment=None)
    return predict(model.to(device), loader, device, amp, flip)


def tta_accuracy(logits: torch.Tensor, flipped_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Flip-TTA accuracy: the class of the mean logits of each image and its mirror image."""
    return float(((logits + flipped_logits).argmax(1) == labels).float().mean())


def tta_applies(augment: bool) -> bool:
    """Whether a run that trains with augmentation `augment` (train.defaults' per-dataset flag, or --augment)
    reports flip-TTA accuracy: only where training flips the images. A net never shown a mirrored image has
    not learnt that a mirror is the same class (on digits it is not: a mirrored 2 is no 2)."""
    return bool(augment)


def augment_for_epoch(cfg: TrainConfig, epoch: int) -> AugmentConfig | None:
    """The augmentation of a 1-based epoch: shift-scale-rotate and cutout probabilities scaled by a factor
    moving linearly from cfg.augment_strength() (first epoch) to cfg.augment_end (last epoch); flip is never
    scheduled."""
    start = cfg.augment_strength()
    if cfg.augment is None or start == cfg.augment_end == 1.0:
        return cfg.augment
    t = (epoch - 1) / (cfg.epochs - 1) if cfg.epochs > 1 else 0.0
    factor = start + (cfg.augment_end - start) * t
    return replace(cfg.augment, affine_p=cfg.augment.affine_p * factor, cutout_p=cfg.augment.cutout_p * factor)


class WeightEMA:
    """Exponential moving average of a model's parameters and float buffers (BN statistics), updated per step
    on the device with foreach ops (no host sync). Its decay ramps up as min(decay, (1 + n) / (10 + n)) after
    n updates, so that the random initial weights are forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = self._tensors(model)

    def _tensors(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple]:
        src = dict(model.named_parameters()) | dict(model.named_buffers())
        dst = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        floats = [k for k in dst if dst[k].is_floating_point()]
        ints = [k for k in dst if not dst[k].is_floating_point()]  # e.g. BN's num_batches_tracked
        others = ([dst[k] for k in ints], [src[k].detach() for k in ints]) if ints else ()
        # Detached once, not per step: a detached tensor shares its parameter's storage, and the optimizer
        # and load_state_dict update parameters in place, so these views always hold the live values.
        return [dst[k] for k in floats], [src[k].detach() for k in floats], others

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        ema, live, others = self._pairs
        torch._foreach_lerp_(ema, live, 1.0 - decay)
        if others:  # one kernel for all of them, not one each
            torch._foreach_copy_(*others)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


@torch.no_grad()
def refresh_bn(model: nn.Module, loader: DeviceLoader, device: torch.device, amp: bool = True) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are the exact mean and variance over the
    loader's (plain) images, as torch.optim.swa_utils.update_bn computes them; the model itself is untouched
    (an EMA's buffers keep averaging, a resumed run replays the same steps)."""
    fresh = copy.deepcopy(model)
    norms = [m for m in fresh.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return fresh
    for m in norms:
        m.reset_running_stats()
    fresh.train()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(device, amp)):
        for k, (x, _) in enumerate(loader):
            # momentum 1/(k+1) at batch k: the cumulative average over the batches, as momentum=None computes
            # it, but without reading num_batches_tracked back to the host in every BatchNorm of every batch
            for m in norms:
                m.momentum = 1.0 / (k + 1)
            fresh(x)
    for m in norms:
        m.momentum = 0.1
    return fresh.eval()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device | str = "cpu",
             batch_size: int = 1024, amp: bool = True) -> tuple[float, float]:
    """(loss, accuracy) of a model on uint8 HWC images: a small pure function."""
    logits, labels, loss = predict_images(model, x, y, mean, std, device, batch_size, amp)
    return loss, float((logits.argmax(1) == labels).float().mean())


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """SGD with Nesterov momentum and a per-step OneCycle; BN and bias parameters get no weight decay and
    cfg.bias_lr_scale times the peak lr."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=True, **_multi_tensor(model))
    if total_steps < MIN_STEPS:
        raise TrainError(f"{total_steps} training steps are too few for a OneCycle schedule; "
                         "use more epochs, more images or a smaller batch")
    # OneCycle divides by the warm-up length in steps, which must be at least one step.
    pct_start = min(max(cfg.pct_start, 2.0 / total_steps), 0.5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[cfg.lr, cfg.lr * cfg.bias_lr_scale], total_steps=total_steps, pct_start=pct_start,
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor, anneal_strategy=cfg.anneal)
    return optimizer, scheduler


def _multi_tensor(model: nn.Module) -> dict[str, bool]:
    """The optimizer's multi-tensor path: a fused kernel on CUDA, foreach ops elsewhere. torch picks foreach
    by itself on CUDA only; on the CPU its default loops over the parameters, several ops each."""
    on_cuda = all(p.device.type == "cuda" for p in model.parameters())
    return {"fused": True} if on_cuda else {"foreach": True}


def rng_states(device: torch.device) -> dict[str, bytes | None]:
    """torch's CPU RNG state and, on CUDA, the device's, as bytes: a checkpoint loaded with any map_location
    leaves bytes where they were (tensors would move to that device, where set_rng_state refuses them)."""
    cuda = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return {"rng_cpu": bytes(torch.get_rng_state().numpy()),
            "rng_cuda": bytes(cuda.numpy()) if cuda is not None else None}


def _rng_tensor(value: bytes | torch.Tensor) -> torch.Tensor:
    """A stored RNG state as the CPU ByteTensor set_rng_state takes (checkpoints before bytes held tensors)."""
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)
    return value.detach().to("cpu", torch.uint8)


def restore_rng_states(state: dict, device: torch.device) -> None:
    """Set torch's RNG states from a checkpoint written by rng_states (or one holding tensors on any device
    that keeps their data); the CUDA state only when training on CUDA."""
    torch.set_rng_state(_rng_tensor(state["rng_cpu"]))
    if torch.device(device).type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(_rng_tensor(state["rng_cuda"]), device)


def _save_atomic(obj: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


@dataclass
class _Run:
    """What one training run trains and scores with: built by _build, shared by train's helpers."""

    model: nn.Module
    train_loader: DeviceLoader
    eval_loader: DeviceLoader
    plain_train: DeviceLoader | None  # the training images unaugmented, for a BatchNorm refresh (None: no refresh)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    ema: WeightEMA | None

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and returned: the EMA of the weights when there is one."""
        return self.ema.model if self.ema is not None else self.model


def _build(genome_or_model, cfg: TrainConfig, data: ImageData, device: torch.device) -> _Run:
    model = _as_model(genome_or_model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = data.mean, data.std
    train_loader = DeviceLoader(data.x_train, data.y_train, mean, std, cfg.batch_size, device, train=True,
                                augment=cfg.augment, seed=cfg.seed, alternate_flip=cfg.alternate_flip)
    eval_loader = DeviceLoader(data.x_test, data.y_test, mean, std, cfg.eval_batch_size, device, train=False,
                               augment=None)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=cfg.epochs * len(train_loader))
    # A short run is evaluated (and returned) with its BatchNorm statistics recomputed (Recipe.bn_refresh_steps).
    refresh = cfg.epochs * len(train_loader) < cfg.bn_refresh_steps
    plain_train = DeviceLoader(data.x_train, data.y_train, mean, std, cfg.eval_batch_size, device, train=False,
                               augment=None) if refresh else None
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    return _Run(model, train_loader, eval_loader, plain_train, optimizer, scheduler, ema)


def _resume(run: _Run, path: Path | None, identity: dict, device: torch.device) -> list[EpochStats]:
    """Load the checkpoint at `path` into `run` and return its history; [] when there is none."""
    if path is None or not path.exists():
        return []
    # onto the CPU: load_state_dict copies each tensor to its parameter's device, and the RNG states
    # must be CPU ByteTensors whatever device the rest was on
    state = load_weights(path, map_location="cpu")
    if state.get("identity") != identity:
        raise CheckpointError(f"checkpoint {path} belongs to another model, config or dataset; "
                              "delete it or choose another --out")
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # the saved groups carry the saving run's fused/foreach choice
        group.update({"fused": None, "foreach": None, **_multi_tensor(run.model)})
    run.scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state, device)
    return [EpochStats(**h) for h in state["history"]]


def _checkpoint(run: _Run, path: Path, identity: dict, history: list[EpochStats], device: torch.device) -> None:
    _save_atomic({"identity": identity, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                  "scheduler": run.scheduler.state_dict(), "history": [asdict(h) for h in history],
                  "ema": run.ema.state_dict() if run.ema is not None else None, **rng_states(device)}, path)


def _train_epoch(run: _Run, cfg: TrainConfig, epoch: int, step: Callable, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One epoch's steps: (summed loss, correct predictions, images seen), the first two on the device (no
    host sync per step); a non-finite loss ends the epoch early (checked every cfg.nan_check_every steps)."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = run.train_loader
    if cfg.progress and cfg.progress_bar:
        batches = tqdm(run.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="batch")
    for i, (x, y) in enumerate(batches, 1):
        out, loss = step(x, y)
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if cfg.nan_check_every and i % cfg.nan_check_every == 0 and not torch.isfinite(loss_sum):
            break
    return loss_sum, correct, seen


def _stepper(run: _Run, cfg: TrainConfig, device: torch.device):
    """step(x, y) -> (logits, loss): one optimiser step (and EMA update) on one batch."""
    # mode "reduce-overhead" replays the forward and backward as CUDA graphs: one launch instead of one per
    # kernel, for nets whose kernels are too small to hide the launch cost (results/benchmarks/ops_per_step/ops_per_step_cpu.md)
    step_model = torch.compile(run.model, mode=cfg.compile_mode) if cfg.compile else run.model
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(device, cfg.amp))

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(**autocast):
            out = step_model(x)
            loss = criterion(out.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update()
        return out, loss

    return step


def _evaluate(run: _Run, cfg: TrainConfig, epoch: int, device: torch.device) -> tuple[float, float, float]:
    """(loss, accuracy, flip-TTA accuracy) on the held-out images after `epoch`; NaN where not evaluated
    (cfg.eval_every; flip-TTA only with cfg.tta)."""
    val_loss = val_acc = val_acc_tta = float("nan")
    if cfg.eval_every >= 0 and (epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0)):
        scored = refresh_bn(run.eval_model, run.plain_train, device, cfg.amp) if run.plain_train is not None \
            else run.eval_model
        val_logits, val_labels, val_loss = predict(scored, run.eval_loader, device, cfg.amp)
        val_acc = float((val_logits.argmax(1) == val_labels).float().mean())
        if cfg.tta:
            flipped, _, _ = predict(scored, run.eval_loader, device, cfg.amp, flip=True)
            val_acc_tta = tta_accuracy(val_logits, flipped, val_labels)
    return val_loss, val_acc, val_acc_tta


def _epoch_line(cfg: TrainConfig, stats: EpochStats) -> str:
    held_out = (f"  {cfg.held_out} loss {stats.val_loss:.3f} acc {stats.val_acc:.4f}"
                if math.isfinite(stats.val_acc) else "")
    held_out += f" (flip-TTA {stats.val_acc_tta:.4f})" if math.isfinite(stats.val_acc_tta) else ""
    return (f"epoch {stats.epoch}/{cfg.epochs}: train loss {stats.train_loss:.3f} acc {stats.train_acc:.4f}"
            f"{held_out}  {stats.images_per_s:,.0f} img/s")


def train(genome_or_model, config: TrainConfig, data: ImageData,
          on_epoch: Callable[[EpochStats], bool | None] | None = None) -> TrainResult:
    """Train on data's training part, evaluating on its held-out part after every epoch.

    With `config.ema_decay` > 0 the EMA of the weights is what is evaluated and returned in `result.model`
    (a plain nn.Module of the same architecture).

    `on_epoch(stats)` returning True stops the run (status "stopped"): the search's pruning hook.
    With `config.checkpoint` set, a run interrupted after epoch k resumes at epoch k + 1 and ends
    with the same weights as an uninterrupted run (same seed, same device), within float tolerance, on the
    CPU. On CUDA it replays the same data order, augmentations and RNG streams, but cuDNN's autotuning and
    atomic adds make any two runs differ in the last bits, and the difference grows over the epochs.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    cfg, device = config, resolve_device(config.device)
    if device.type == "cuda":
        # Fixed input shapes: cuDNN times its algorithms once per layer shape and keeps the fastest. Chosen
        # for speed over bitwise repeatability: on CUDA two runs of one seed (and so a resumed run and an
        # uninterrupted one) differ in the last bits and drift apart over the epochs, as atomic adds in the
        # backward pass make them do anyway; the data order, augmentations and RNG streams stay the same.
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    run = _build(genome_or_model, cfg, data, device)
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else None
    identity = {"model": _identity(genome_or_model), "config": cfg.fingerprint(), "data": data.name,
                "n_train": len(data.y_train)}
    history = _resume(run, ckpt_path, identity, device)
    start_epoch = len(history) + 1
    step = _stepper(run, cfg, device)
    status, message = "completed", ""
    for epoch in range(start_epoch, cfg.epochs + 1):
        run.train_loader.set_epoch(epoch)  # the epoch's order and augmentations depend on (seed, epoch) only
        run.train_loader.set_augment(augment_for_epoch(cfg, epoch))  # the schedule; once per epoch, off the hot path
        run.model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = _train_epoch(run, cfg, epoch, step, device)
        if not math.isfinite(float(loss_sum)):
            status, message = "diverged", f"non-finite training loss in epoch {epoch}"
            break
        synchronize(device)  # this run's device (cuda:N), not the current one
        seconds = time.perf_counter() - t0
        val_loss, val_acc, val_acc_tta = _evaluate(run, cfg, epoch, device)
        stats = EpochStats(epoch, float(loss_sum) / seen, int(correct) / seen, val_loss, val_acc,
                           run.scheduler.get_last_lr()[0], seconds, seen / seconds, val_acc_tta)
        history.append(stats)
        if cfg.progress and cfg.epoch_lines:
            print(_epoch_line(cfg, stats), flush=True)
        if ckpt_path and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            _checkpoint(run, ckpt_path, identity, history, device)
        if on_epoch is not None and on_epoch(stats):
            status, message = "stopped", f"stopped by the caller after epoch {epoch}"
            break
    model = run.eval_model  # the EMA weights, when there is an EMA, are the result
    if run.plain_train is not None and history:
        model = refresh_bn(model, run.plain_train, device, cfg.amp)
    if cfg.channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(status, history, model, message, str(device), resumed_epochs=start_epoch - 1)


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of config with some settings changed (None values are ignored): for command-line flags."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
