#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export KEDRO_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers: most tests wait on kedro processes and servers (~5-6 min instead of ~10).
exec .venv/bin/python -m pytest -n 2 "$@"
