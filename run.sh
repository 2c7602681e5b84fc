#!/usr/bin/env bash
# The main job: set up, build and train a tiny Hope on text every Python installation carries,
# save it, reload it, check the reload, generate a sample and write a report.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m hope_hf.quickstart "$@"
