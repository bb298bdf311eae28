#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export KEDRO_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers, one per core: the suite is CPU-bound (kedro processes of several images).
# 1153 s here on 2 cores, alone (docs/development.md).
exec .venv/bin/python -m pytest -n 2 "$@"
