#!/usr/bin/env bash
# The main job, from a fresh clone: sample_project's pipeline on KFP's local runner, one
# process per Kedro node as Vertex AI runs it, into the embedded sqlite store.
# Add --fail to make node quality_gate fail and see a FAILED run with its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --main
export KEDRO_DISABLE_TELEMETRY=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python scripts/run_kfp_local.py "$@"
