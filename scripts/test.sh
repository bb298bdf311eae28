#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export KEDRO_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Three workers on 2 cores: the suite is CPU-bound (kedro processes of several images), but
# with two the cores idle while a test waits out an outage or a server's start
# (docs/development.md).
exec .venv/bin/python -m pytest -n 3 "$@"
