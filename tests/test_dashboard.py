"""Issue 37: the `watch it: optuna-dashboard ...` hint every search.run prints is a command optuna-dashboard's own
command line accepts, and it opens the study the project wrote; the set-up installs the dashboard."""
from __future__ import annotations

import configparser
import re
import shlex
import sys
from importlib.metadata import entry_points
from pathlib import Path

import optuna
import pytest

from search.storage import dashboard_command, open_storage, redact, resolve_url

ROOT = Path(__file__).resolve().parents[1]


class Opened(Exception):
    """Raised where optuna-dashboard, its storage open, would start serving."""


def storage_the_dashboard_opens(command: str, monkeypatch):
    """Run the console script the command names (optuna-dashboard's real parser and storage resolution) as far
    as the storage it opens, without starting a server."""
    program, *argv = shlex.split(command)
    scripts = entry_points(group="console_scripts", name=program)
    assert scripts, f"no installed console script {program!r}: ./setup.sh env installs the dashboard extra"
    main = next(iter(scripts)).load()
    opened = []

    def create_app(storage, **kwargs):
        opened.append(storage)
        raise Opened

    monkeypatch.setattr(sys.modules[main.__module__], "create_app", create_app)
    monkeypatch.setattr(sys, "argv", [program, *argv])
    with pytest.raises(Opened):
        main()
    return opened[0]


@pytest.mark.parametrize("spec", [None, "results/shared.journal"], ids=["sqlite (default)", "journal (--jobs)"])
def test_the_dashboard_hint_opens_the_study_search_run_wrote(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # search.run's paths are relative to where it runs, as the hint's are
    url = resolve_url(spec, "digits-nas")
    study = optuna.create_study(study_name="digits-nas", storage=open_storage(url), direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    hint = dashboard_command(redact(url))  # what search.run prints after "watch it: "
    storage = storage_the_dashboard_opens(hint, monkeypatch)
    trials = storage.get_all_trials(storage.get_study_id_from_name("digits-nas"))
    assert [t.value for t in trials] == [t.value for t in study.trials] and len(trials) == 2


def test_setup_installs_the_extra_that_provides_the_dashboard():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extra = cfg["options.extras_require"]["dashboard"]
    assert "optuna-dashboard" in extra
    assert re.search(r'pip install -q -e "\.\[[^]]*\bdashboard\b[^]]*\]"', (ROOT / "setup.sh").read_text())
