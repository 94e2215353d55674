#!/usr/bin/env bash
# Set up, lint and run the whole test suite: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The test tools (pytest, ruff, linters) and LitServe for the benchmark's tests.
EXTRAS=train,dev,bench scripts/setup.sh
scripts/test-tools.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
