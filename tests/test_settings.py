"""How a setting is resolved: given on the command line > stored in the study > per-dataset default >
built-in default (search.settings.resolve), one test per rung."""
from __future__ import annotations

import dataclasses

from search.settings import DEFAULTS, RESUMED, SearchSettings, resolve, resolve_settings
from space import CONSTRUCTION_VERSION
from space.rules import DEFAULT_MAX_PARAMS

CIFAR = DEFAULTS["cifar10"]


def given(**flags):
    return {"dataset": "cifar10", **flags}


def test_the_first_rung_that_has_a_value_wins():
    assert resolve(1, 2, 3, 4) == 1 and resolve(None, 2, 3, 4) == 2
    assert resolve(None, None, 3, 4) == 3 and resolve(None, None, None, 4) == 4
    assert resolve(False, True) is False  # a given False (or 0) is a value, not "not given"


def test_rung_1_a_flag_beats_the_stored_value_and_the_defaults():
    stored, _ = resolve_settings(given(trial_epochs=3, batch_size=64))
    settings, kept = resolve_settings(given(trial_epochs=5, batch_size=32), stored)
    assert (settings.trial_epochs, settings.batch_size) == (5, 32)
    assert kept == [f"lr {CIFAR.lr_for(64)} (default now {CIFAR.lr_for(32)})"]  # no --lr: the stored rung
    assert resolve_settings(given(batch_size=32))[0].lr == CIFAR.lr_for(32)  # the table's lr, scaled


def test_rung_2_a_resumed_study_keeps_its_stored_values_of_the_defaults():
    old = dataclasses.replace(resolve_settings(given())[0], trial_epochs=CIFAR.trial_epochs + 1, lr=0.05,
                              construction=1)
    settings, kept = resolve_settings(given(), old)
    assert (settings.trial_epochs, settings.lr, settings.construction) == (CIFAR.trial_epochs + 1, 0.05, 1)
    assert f"trial_epochs {CIFAR.trial_epochs + 1} (default now {CIFAR.trial_epochs})" in kept
    assert f"construction 1 (default now {CONSTRUCTION_VERSION})" in kept
    # A setting outside RESUMED has no stored rung: its value is the flag's, which open_study compares.
    assert "seed" not in RESUMED
    assert resolve_settings(given(seed=0), dataclasses.replace(old, seed=1))[0].seed == 0


def test_rung_3_the_dataset_decides_what_no_flag_or_study_does():
    for name, d in DEFAULTS.items():
        s, kept = resolve_settings(given(dataset=name))
        assert (s.trial_epochs, s.batch_size, s.lr, s.val_size, s.augment) == (
            d.trial_epochs, d.batch_size, d.lr, d.val_size, d.augment) and kept == []


def test_rung_4_the_built_in_default_comes_last():
    s, _ = resolve_settings(given())
    fields = {f.name: f for f in dataclasses.fields(SearchSettings)}
    assert s.max_params == DEFAULT_MAX_PARAMS and s.seed == 0 and s.max_macs is None
    assert (s.objectives, s.prescreen, s.proxy) == (fields["objectives"].default, 1, fields["proxy"].default)
    assert s.construction == CONSTRUCTION_VERSION
