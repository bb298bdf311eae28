#!/usr/bin/env bash
# Set up everything from a fresh clone (idempotent, quick when already done):
#   .venv         the package with its test extras, kedro-mlflow and sample_project;
#   .venv-skinny  the package on the client-only MLflow (mlflow-skinny), no kedro-mlflow,
#                 as a slim production image would have it (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

make_venv() {
    local dir="$1"; shift
    if [ ! -x "$dir/bin/python" ]; then
        "$PYTHON" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --upgrade pip
    fi
    "$dir/bin/python" -m pip install --quiet "$@"
}

make_venv .venv -e ".[test,kedro-mlflow]" -e ./sample_project
make_venv .venv-skinny -e ".[gcp]" -e ./sample_project
if .venv-skinny/bin/python -c "import sqlalchemy" 2>/dev/null; then
    echo "bootstrap: .venv-skinny must hold the client-only MLflow, but sqlalchemy is there" >&2
    exit 1
fi
