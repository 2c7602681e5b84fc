#!/usr/bin/env bash
# The main job: set up, then train hope-tiny and a same-size Transformer identically on text every Python
# installation carries (CPU, a few minutes), check the saved Hope reloads exactly, sample both, and write a
# report with both loss curves. Extra arguments go to `python -m hope_hf.quickstart` (e.g. --steps 300).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m hope_hf.quickstart "$@"
