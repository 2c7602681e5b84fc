#!/usr/bin/env bash
# Creates .venv and installs hope-hf with its extras. Idempotent: re-runs only when setup.cfg changes.
# Needs only Python >= 3.10 with pip. Set HOPE_PYTHON to pick the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${HOPE_PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.hope-setup-$(sha1sum setup.cfg pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The CPU build of PyTorch (an unpinned torch would pull a multi-GB CUDA build on Linux).
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[train,eval,test]"
rm -f "$VENV"/.hope-setup-*
touch "$STAMP"
