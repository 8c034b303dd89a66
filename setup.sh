#!/usr/bin/env bash
# Set-up in one command, run from anywhere; both commands are safe to run again.
#   ./setup.sh quickstart   create .venv if needed, then the offline digits search (under two minutes on 2 CPU cores)
#   ./setup.sh test         create .venv if needed, then the test suite (exactly what CI runs)
#   ./setup.sh env          only create / update .venv
# Needs python3 >= 3.11 (or PYTHON=/path/to/python3.11). VENV=DIR puts the environment elsewhere (CI uses
# a fresh temporary one). torch: where `nvidia-smi` works, the CUDA build from PyPI (a CPU-only torch
# already in the venv is replaced); elsewhere torch==2.13.0, the CPU wheel, installed first and pinned
# because a newer torch pulls gigabytes of CUDA libraries. A torch already in the venv is otherwise kept.
set -euo pipefail
cd "$(dirname "$0")"
export NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # albumentations asks the network otherwise
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

ensure_env() {
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: tinynas needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1); give PYTHON=/path/to/python3.11" >&2
        exit 2
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        # GPU node: keep a CUDA torch, else install PyPI's default Linux wheel (a CUDA build).
        if ! python -c 'import torch, sys; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
            python -m pip uninstall -q -y torch 2>/dev/null || true
            python -m pip install -q torch
        fi
    elif ! python -c 'import torch' 2>/dev/null; then
        python -m pip install -q torch==2.13.0
    fi
    # The project itself (editable) once, and again only when its dependencies change.
    stamp="$VENV/.tinynas-setup.cfg"
    if ! cmp -s setup.cfg "$stamp"; then
        # postgres: the driver tests/test_postgres.py needs; deploy: ONNX; dashboard: the optuna-dashboard command
        python -m pip install -q -e ".[test,postgres,deploy,dashboard]"
        cp setup.cfg "$stamp"
    fi
}

case "${1:-}" in
    env)
        ensure_env
        echo "environment ready: source $VENV/bin/activate" ;;
    quickstart)
        ensure_env
        python -m search.run --dataset digits --trials 8 --max-macs 3000000 --trial-epochs 3 --final-epochs 8
        echo "next: open results/digits-nas/report.md; the winner is results/digits-nas/best_model.py (+ .pt)" ;;
    test)
        ensure_env
        python -m pytest -n auto ;;
    *)
        echo "usage: ./setup.sh quickstart|test|env" >&2
        exit 2 ;;
esac
