#!/usr/bin/env bash
# Command 1: set up the environment and run the main job, the paper's leave-one-task-out experiment
# (plus the alpha sweep and the studies) on the bundled default data, writing a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out/openllm_v2}
.venv/bin/benchroute data info openllm_v2
.venv/bin/benchroute experiment all openllm_v2 --out "$OUT"
