#!/usr/bin/env bash
# The test suite: set up, then run pytest (CPU, a few minutes). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
