#!/usr/bin/env bash
# Set up everything from a fresh clone (idempotent, quick when already done):
#   .venv           the package with its test extras, kedro-mlflow 2.x and sample_project
#                   (MLflow 3, full);
#   .venv-skinny    the package on the client-only MLflow 3 (mlflow-skinny), no kedro-mlflow,
#                   as a slim production image would have it;
#   .venv-vertexai  a kedro-vertexai project's image: kedro-vertexai[mlflow]==1.0.0 (MLflow 2,
#                   kedro-mlflow 1.x) plus this package, resolved by pip as a user's would be;
#   .venv-mlflow-2.14 / .venv-mlflow-3.0
#                   the oldest MLflow client of each supported line (mlflow-skinny);
#   .venv-airflow   an Airflow 3 deployment's image: apache-airflow 3.3.2, kedro-airflow 0.11.0,
#                   this package on the client-only MLflow, sample_project (~370 MB, ~2 min).
# The tests use all of them; `bootstrap.sh --main` makes only .venv (all the main job needs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# pip's output goes to <venv>/bootstrap.log (shown when it fails), so that the demo's output
# is the pipeline's. A venv whose requirements and pyproject files have not changed since it
# was last made is left as it is (its stamp says so): editable installs rebuild otherwise.
make_venv() {
    local dir="$1"; shift
    local log="$dir/bootstrap.log" stamp
    stamp="$(printf '%s\n' "$@" | cat - pyproject.toml sample_project/pyproject.toml | sha256sum)"
    if [ -f "$dir/.bootstrap-stamp" ] && [ "$(cat "$dir/.bootstrap-stamp")" = "$stamp" ]; then
        return 0
    fi
    echo "bootstrap: setting up $dir (pip's log: $log)" >&2
    if [ ! -x "$dir/bin/python" ]; then
        "$PYTHON" -m venv "$dir"
    fi
    if ! { "$dir/bin/python" -m pip install --upgrade pip \
        && "$dir/bin/python" -m pip install "$@"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip failed for $dir; the whole log: $log" >&2
        exit 1
    fi
    echo "$stamp" >"$dir/.bootstrap-stamp"
}

make_venv .venv -e ".[test,kedro-mlflow]" -e ./sample_project
if [ "${1:-}" = "--main" ]; then
    exit 0
fi
make_venv .venv-skinny -e ".[mlflow-skinny,gcp]" -e ./sample_project
if .venv-skinny/bin/python -c "import sqlalchemy" 2>/dev/null; then
    echo "bootstrap: .venv-skinny must hold the client-only MLflow, but sqlalchemy is there" >&2
    exit 1
fi
# kedro-mlflow 1.x imports kedro_datasets without declaring it (see docs/kedro-vertexai.md).
# The tests also serve MLflow 2 from here, whose server needs SQLAlchemy < 2.1.
make_venv .venv-vertexai "kedro-vertexai[mlflow]==1.0.0" "kedro-datasets>=4" "sqlalchemy<2.1" \
    -e . -e ./sample_project
make_venv .venv-mlflow-2.14 "mlflow-skinny==2.14.3" -e . -e ./sample_project
make_venv .venv-mlflow-3.0 "mlflow-skinny==3.0.1" -e . -e ./sample_project
make_venv .venv-airflow "apache-airflow==3.3.2" "kedro-airflow==0.11.0" -e ".[mlflow-skinny]" \
    -e ./sample_project
