"""What makes the trials of one study comparable (the per-dataset defaults live in train.defaults).

A study's `SearchSettings` (its resolved config) are stored in its user attrs when it is created, with the
layout's version (SCHEMA). A later run (a resume, or another worker) with different settings is refused:
mixing accuracies measured on different data, budgets or schedules would make TPE's model and the
leaderboard meaningless. Settings stored by an earlier layout are upgraded by `migrate`, the one place that
knows the old layouts.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from space import CONSTRUCTION_VERSION, SPACE_VERSION, Rules
from space.latency import LatencyError, LatencyTable, load_table, table_from_dict
from space.machine import checked_table
from space.rules import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF
from train.defaults import DEFAULTS, DatasetDefaults, defaults_for  # the one per-dataset table, shared with train.run
from train.augment import AugmentConfig
from train.engine import TrainConfig, tta_applies
from train.recipe import before_values

__all__ = ["OBJECTIVES", "COSTS", "parse_objectives", "directions", "cost_name", "DEFAULT_PROXY", "DATASET_SIZES", "SCHEMA", "SearchError", "one_line", "DatasetDefaults", "DEFAULTS",
           "SearchSettings", "migrate", "parse_val_size", "default_val_size", "resolve", "RESUMED", "resolve_settings", "defaults_text", "latency_settings"]


class SearchError(Exception):
    """Bad input to a search command; the message is one line (the CLI prints it and exits with 2)."""


def one_line(e: BaseException) -> str:
    """'Type: first line of the message', for a failed_reason or an error line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# What a study optimises (--objectives): validation accuracy alone (the default; pruning works), or accuracy and
# an analytic cost (space.analyze), a multi-objective study: maximise accuracy, minimise parameters, MACs per
# image or the latency predicted by the study's --latency-table (space.latency). A rejected candidate is told (0, its cost) with its constraint violations, (0,) in a single-objective
# study (search.lifecycle.objective_values). Optuna cannot prune multi-objective studies (Trial.report raises),
# so they train every candidate for the whole --trial-epochs. Their Pareto front: search.trials.pareto_trials.
OBJECTIVES = ("accuracy", "accuracy,params", "accuracy,macs", "accuracy,latency")
COSTS = {"params": "parameters", "macs": "MACs per image", "latency": "predicted ms per image",
         "latency_ms": "predicted ms per image"}  # the leaderboard's column of the latency cost


def parse_objectives(text: str) -> str:
    """The canonical objectives string (one of OBJECTIVES)."""
    canon = ",".join(p.strip() for p in text.split(","))
    if canon not in OBJECTIVES:
        raise SearchError(f"unknown --objectives {text!r}; choose one of: {', '.join(OBJECTIVES)}")
    return canon


def directions(objectives: str) -> list[str]:
    return ["maximize"] + ["minimize"] * (len(objectives.split(",")) - 1)


def cost_name(objectives: str) -> str | None:
    """'params', 'macs' or 'latency' for a multi-objective study, None for accuracy alone."""
    names = objectives.split(",")
    return names[1] if len(names) > 1 else None


def parse_val_size(text: str, flag: str = "--val-size") -> int | float:
    """'5000' -> 5000 images; '0.1' -> a tenth of the images (of the training set for --val-size, of the
    folder for --test-size); SearchError naming `flag` for anything else."""
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise SearchError(f"{flag} must be a number of images or a fraction, got {text!r}") from None
    if value <= 0 or (isinstance(value, float) and value >= 1):
        raise SearchError(f"{flag} must be a positive count or a fraction in (0, 1), got {text}")
    return value


def defaults_text(name: str) -> str:
    """A per-dataset default for a help text, read from the one table: 'cifar10 8, digits 4'."""
    return ", ".join(f"{k} {getattr(d, name)}" for k, d in DEFAULTS.items() if k != "synthetic")


DATASET_SIZES = {"cifar10": (50_000, 10_000)}  # training / test images of the official set, known without loading


def default_val_size(dataset: str, subset_train: int | None) -> tuple[int | float, str]:
    """(validation size, note) when --val-size is not given: the dataset's default (train.defaults), and for a
    --subset-train smaller than the training set the same fraction of the subset (CIFAR-10: 5,000 of 50,000,
    so 10 %), with a note saying so; the note is "" where nothing was scaled (a default that is already a
    fraction applies to the subset as it is)."""
    default = defaults_for(dataset).val_size
    if subset_train is None or isinstance(default, float) or dataset not in DATASET_SIZES:
        return default, ""
    n_all = DATASET_SIZES[dataset][0]
    if subset_train >= n_all:
        return default, ""
    n = max(1, round(subset_train * default / n_all))
    return n, (f"--subset-train {subset_train:,} without --val-size: {n:,} of them held out for validation, the "
               f"default {default / n_all:.0%} ({default:,} of {n_all:,}); --val-size to choose")


# The prescreen's proxy when --proxy is not given: the one that ranked trained genomes of the space best
# (results/benchmarks/proxies_rank/proxies_rank_cpu.md). Here, beside the stored default, so that the two cannot differ.
DEFAULT_PROXY = "grad_norm"
SCHEMA = 3  # the layout of the stored settings; 1: before the "schema" key, 2: before "sampler" (see migrate)


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a trial's validation accuracy or feasibility, or which candidates are trained
    (not the device, not N)."""

    dataset: str
    max_params: int
    min_rf: int  # input pixels
    trial_epochs: int
    val_size: int | float
    seed: int
    subset_train: int | None  # training images used at all (None: all of them)
    batch_size: int
    lr: float
    augment: bool
    max_macs: int | None = None  # multiply-accumulates per image (None: no limit)
    objectives: str = "accuracy"  # or "accuracy,params" / "accuracy,macs" (parse_objectives)
    space: int = SPACE_VERSION  # the search space's version (space.SPACE_VERSION) the trials were sampled from
    # How the space's points become genomes under the rules (space.CONSTRUCTION_VERSION); a study resumes with
    # the construction it was begun with (search.run keeps the stored one).
    construction: int = CONSTRUCTION_VERSION
    # Which candidates get trained (search.prescreen): each trained trial is the best of `prescreen` feasible
    # proposals by `proxy`; 1 = off.
    prescreen: int = 1
    proxy: str = DEFAULT_PROXY
    sampler: str = "tpe"  # which Optuna sampler proposes the candidates (search.study.SAMPLERS)
    # The rest of the training recipe, train.engine.TrainConfig.recipe() (train.recipe.Recipe and the
    # augmentation's settings), as sorted (name, value) pairs: a study resumed after those defaults changed
    # trains its later trials, and its final retrain, as it began.
    recipe: tuple[tuple[str, Any], ...] = field(default_factory=lambda: _pairs(TrainConfig().recipe()))
    # A latency budget (space.latency): predicted ms per image on the target of the table, stored whole with
    # the study so that a resume (or a worker elsewhere) predicts with the same figures.
    max_latency_ms: float | None = None
    latency_table: LatencyTable | None = None
    # The user's folder of class folders (--dataset PATH without test/): the test images carved out of it, a
    # count or a fraction (None: train.userdata.DEFAULT_TEST_SIZE); None for every other dataset. Stored so
    # that a resume, a retrain and an export carve the same test images (the split's seed is fixed).
    test_size: int | float | None = None

    @property
    def rules(self) -> Rules:
        return Rules(self.max_params, self.min_rf, self.max_macs, self.max_latency_ms, self.latency_table)

    def to_dict(self) -> dict[str, Any]:
        table = self.latency_table.to_dict() if self.latency_table is not None else None
        return {**asdict(replace(self, latency_table=None)), "latency_table": table, "recipe": dict(self.recipe),
                "schema": SCHEMA}

    def with_recipe(self, **changes: Any) -> SearchSettings:
        """A copy whose recipe has some settings changed (names as in TrainConfig.recipe())."""
        return replace(self, recipe=_pairs({**dict(self.recipe), **changes}))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        d = migrate(d)
        names = {f.name for f in fields(cls)}
        missing = names - d.keys()
        if missing:
            raise SearchError(f"the study's stored settings lack {', '.join(sorted(missing))}; "
                              "it was not created by search.run")
        try:  # a recipe stored by a later version, with settings this one lacks, must not be half-applied
            TrainConfig().with_recipe(d["recipe"])
        except (TypeError, ValueError) as e:
            raise SearchError(f"the study's stored recipe does not fit this version: {e}") from None
        table = d["latency_table"]
        if table is not None and not isinstance(table, LatencyTable):
            try:
                table = table_from_dict(table, "the study's stored latency table")
            except LatencyError as e:
                raise SearchError(str(e)) from None
        return cls(**{**{k: d[k] for k in names}, "recipe": _pairs(d["recipe"]), "latency_table": table})

    def differing(self, stored: SearchSettings) -> list[str]:
        """The names of the settings that differ from `stored`, in field order."""
        return [f.name for f in fields(self) if getattr(stored, f.name) != getattr(self, f.name)]

    def changes(self, stored: SearchSettings, names: list[str] | None = None) -> list[tuple[str, Any, Any]]:
        """(name, stored value, this value) for every setting that differs, or for those of `names`; the recipe's
        differ one by one, as 'recipe.NAME'."""
        out = []
        for k in self.differing(stored) if names is None else names:
            if k == "recipe":
                old, new = dict(stored.recipe), dict(self.recipe)
                out += [(f"recipe.{r}", old.get(r), new.get(r)) for r in sorted(old.keys() | new.keys())
                        if old.get(r) != new.get(r)]
            else:
                out.append((k, getattr(stored, k), getattr(self, k)))
        return out

    def differences(self, stored: SearchSettings) -> list[str]:
        """'name: stored -> requested' for every setting that differs."""
        return [f"{k}: {old!r} -> {new!r}" for k, old, new in self.changes(stored)]

    def train_config(self, epochs: int, device: str, **changes: Any) -> TrainConfig:
        """The recipe the study's trials (and its final retrain) train with, for `epochs` epochs: every
        setting that shapes training comes from here, so the two cannot drift apart."""
        config = TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                             augment=AugmentConfig() if self.augment else None, device=device, seed=self.seed,
                             tta=tta_applies(self.augment))
        return replace(config.with_recipe(dict(self.recipe)), **changes)


def resolve(given: Any = None, stored: Any = None, per_dataset: Any = None, builtin: Any = None) -> Any:
    """The one rule that decides a setting's value, highest first:
        1. given on the command line
        2. stored in the study (a resume keeps what its trials were measured with)
        3. the per-dataset default (train.defaults.DEFAULTS)
        4. the built-in default
    The first rung that is not None wins; a setting without some rung passes None for it (a flag's "not
    given" is None, so argparse defaults that matter here are None)."""
    for value in (given, stored, per_dataset, builtin):
        if value is not None:
            return value
    return None


# The settings a resumed study takes from its stored settings when no flag gives them: the per-dataset
# defaults, the recipe, the construction and the search space, whose defaults may change between versions while
# the study's trials were measured (and sampled) with the old ones (space.construct keeps every older space and
# construction); the sampler (a study resumes with its own); the latency table and
# budget (the stored table predicts, even where its file is gone). The others have no stored rung: a flag's
# value (or its built-in default) that differs from the stored one is refused (search.study.open_study).
RESUMED = ("trial_epochs", "val_size", "batch_size", "lr", "augment", "recipe", "construction", "space", "sampler",
           "max_latency_ms", "latency_table", "test_size")


def resolve_settings(given: dict[str, Any], stored: SearchSettings | None = None
                     ) -> tuple[SearchSettings, list[str]]:
    """(settings, kept): every SearchSettings field by `resolve`, from `given` (the flags, by field name,
    None or absent where not given; "dataset" must be there) and the study's `stored` settings (None for a
    new study). `kept` says 'name stored (default now)' for each RESUMED setting the stored rung decided and
    whose default differs."""
    given = _stored_rescale(given, stored)
    d = defaults_for(given["dataset"])
    builtin = {**{f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                  for f in fields(SearchSettings) if f.default is not MISSING or f.default_factory is not MISSING},
               "max_params": DEFAULT_MAX_PARAMS, "min_rf": DEFAULT_MIN_RF, "seed": 0}
    per_dataset = {"trial_epochs": d.trial_epochs, "batch_size": d.batch_size, "augment": d.augment,
                   "val_size": default_val_size(given["dataset"], given.get("subset_train"))[0]}
    values, defaults = {}, {}
    for f in fields(SearchSettings):
        if f.name == "lr":  # the table's lr, scaled to the batch size decided above
            per_dataset["lr"] = d.lr_for(values["batch_size"])
        was = stored if stored is not None and f.name in RESUMED else None
        values[f.name] = resolve(given.get(f.name), getattr(was, f.name, None), per_dataset.get(f.name),
                                 builtin.get(f.name))
        defaults[f.name] = resolve(given.get(f.name), None, per_dataset.get(f.name), builtin.get(f.name))
    settings, fresh = SearchSettings(**values), SearchSettings(**defaults)
    kept = [f"{k} {old!r} (default now {new!r})" for k, old, new in fresh.changes(settings, settings.differing(fresh))]
    return settings, kept


def _stored_rescale(given: dict[str, Any], stored: SearchSettings | None) -> dict[str, Any]:
    """`given` with the study's stored latency table where it is the same table as built and the study's
    rescale (space.machine) stands: a resume or a --jobs worker re-measures the ratio, which never comes out
    exactly the same, and predicts with the ratio the study's trials were predicted with. A rescale asked for
    a study begun without one is a changed table, refused like any other."""
    table, was = given.get("latency_table"), getattr(stored, "latency_table", None)
    if table is None or was is None or table.base_digest != was.base_digest or (table.scale != 1 and was.scale == 1):
        return given
    return {**given, "latency_table": was}


def latency_settings(path: str | None, max_latency_ms: float | None, objectives: str, rescale: bool = False
                     ) -> dict[str, Any]:
    """The given values of --latency-table (loaded and checked, space.latency; checked against this machine's
    speed and, with `rescale` (--latency-rescale), rescaled by it: space.machine) and --max-latency-ms, by
    field name; SearchError (one line) for a bad one. Says so when the table's build found it no better than
    MACs on its target."""
    if path is None:
        if rescale:
            raise SearchError("--latency-rescale needs --latency-table FILE (the table to rescale)")
        if max_latency_ms is not None or cost_name(objectives) == "latency":
            raise SearchError("--max-latency-ms and --objectives accuracy,latency need --latency-table FILE (the "
                              "target's table: python -m train.latency build)")
        return {"latency_table": None, "max_latency_ms": None}
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise SearchError(f"--max-latency-ms must be a positive number, got {max_latency_ms:g}")
    try:
        table, _ = checked_table(load_table(path), rescale, say=lambda line: print(line, flush=True))
    except LatencyError as e:
        raise SearchError(str(e)) from None
    v = table.verdict
    if v and not v.get("beats_macs", True):
        print(f"note: {path}'s build found it no better than MACs on its target (median error "
              f"{v['table_median_err_pct']:.1f} % vs {v['macs_median_err_pct']:.1f} %)", flush=True)
    return {"latency_table": table, "max_latency_ms": max_latency_ms}


def _pairs(recipe: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(recipe.items()))


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Stored settings of any layout, as SCHEMA's; SearchError (one line) for a layout later than this one.

    Schema 1 (no "schema" key) gained keys over time; a key it lacks means the value from before the key
    existed: no MACs limit, accuracy alone, search space 1 and construction 1, no prescreen, and the recipe
    of that time. Schema 2 lacks the sampler: it was TPE. (Schema 3 is refused by the versions before it, so
    that none of them resumes a study of another sampler with TPE.) A layout without the latency keys had no
    latency budgets.
    """
    d = {"max_latency_ms": None, "latency_table": None, "test_size": None, **d}
    version = d.get("schema", 1)
    if not isinstance(version, int) or version > SCHEMA:
        raise SearchError(f"the study's settings were stored by a later version of tinynas (layout {version}, "
                          f"this one reads up to {SCHEMA}): resume it with that version")
    if version == 1:
        # The recipe before it was stored: bias_lr_scale was stored on its own, or was 1.0.
        recipe = {**_SCHEMA1_RECIPE, "bias_lr_scale": d.get("bias_lr_scale", 1.0)}
        d = {"max_macs": None, "objectives": "accuracy", "space": 1, "construction": 1, "prescreen": 1,
             "proxy": DEFAULT_PROXY,
             "recipe": recipe, **d, "schema": 2}
    if d["schema"] == 2:
        d = {"sampler": "tpe", **d, "schema": SCHEMA}
    if isinstance(d.get("recipe"), dict):
        # a setting added to the recipe after the study was stored: the value it trained with then (its BEFORE tag)
        d = {**d, "recipe": {**before_values(), **d["recipe"]}}
    return d


# The training recipe of the schema-1 studies, stored before the recipe was: the defaults of that time, written
# out because defaults change. Settings added since (their BEFORE tag) are filled in by migrate.
_SCHEMA1_RECIPE: dict[str, Any] = {
    "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.1, "pct_start": 0.25, "div_factor": 10.0,
    "final_div_factor": 100.0, "augment_start": None, "augment_end": 0.0, "augment_full_epochs": 25,
    "ema_decay": 0.99,
    "augment.flip_p": 0.5, "augment.affine_p": 0.5, "augment.shift": 0.1, "augment.scale": 0.1, "augment.rotate": 15.0,
    "augment.cutout_p": 0.5, "augment.cutout_size": 16}
