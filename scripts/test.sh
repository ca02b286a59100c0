#!/usr/bin/env bash
# Command 2: set up the environment exactly as command 1 does, then lint (ruff), type-check (mypy) and run
# the test suite (the fast loop while developing: .venv/bin/python -m pytest -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks research
.venv/bin/ruff format --check -q src tests benchmarks research
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
