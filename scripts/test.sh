#!/usr/bin/env bash
# Command 2: set up the environment exactly as command 1 does, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks research
.venv/bin/ruff format --check -q src tests benchmarks research
.venv/bin/python -m pytest -q "$@"
