"""Issue 37: the `watch it: optuna-dashboard ...` hint every search.run prints names a command the set-up installs."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from search.storage import dashboard_command

ROOT = Path(__file__).resolve().parents[1]


def test_the_dashboard_hint_names_a_command_installed_beside_this_python():
    program = dashboard_command("sqlite:///results/digits-nas.db").split()[0]
    installed = Path(sys.executable).parent / program
    assert installed.exists() or shutil.which(program), f"{program} is not installed: ./setup.sh env installs it"
    r = subprocess.run([str(installed if installed.exists() else shutil.which(program)), "--version"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and re.search(r"\d+\.\d+", r.stdout + r.stderr), r


def test_setup_installs_the_extra_that_provides_the_dashboard():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extra = cfg["options.extras_require"]["dashboard"]
    assert "optuna-dashboard" in extra
    assert re.search(r'pip install -q -e "\.\[[^]]*\bdashboard\b[^]]*\]"', (ROOT / "setup.sh").read_text())
