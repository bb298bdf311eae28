"""The main job: sample_project's Kedro pipeline as a KFP pipeline on KFP's local runner.

One process per Kedro node, as Vertex AI Pipelines runs it (start step, node steps, exit
handler), offline and without Docker (``kfp.local.SubprocessRunner(use_venv=False)``), into
the project's tracking store (the embedded sqlite file unless conf or ``MLFLOW_TRACKING_URI``
say otherwise). Prints the run id, its status and how to open it in the MLflow UI.

    python scripts/run_kfp_local.py            # clean run: ends FINISHED
    python scripts/run_kfp_local.py --fail     # quality_gate fails: ends FAILED

Exit code 0 when the run ends as expected (FINISHED, or FAILED with ``--fail``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from kedro_vertex_hooks.naming import TAG_RUN_NOTE

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PROJECT = REPO / "sample_project"
FAILING_PARAMS = "failure.fail=true"


def project_tracking(project_dir: Path) -> tuple[str, str]:
    """Tracking URI and experiment exactly as the project's hooks resolve them."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from kedro_vertex_hooks.config import load_project_config
    from kedro_vertex_hooks.hooks import passive

    bootstrap_project(project_dir)
    with passive(), KedroSession.create(project_path=project_dir) as session:
        config = load_project_config(session.load_context())
    return config.tracking_uri, config.experiment_name


def run_pipeline(project_dir: Path, params: str, run_name: str, workspace: Path) -> None:
    """Run the KFP pipeline locally; a failing step does not raise (the exit handler runs)."""
    from kfp import local

    sys.path.insert(0, str(project_dir))
    from kfp_pipeline import build_pipeline

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workspace),
        raise_on_error=False,
    )
    build_pipeline(project_dir)(params=params, run_name=run_name)


def find_run(tracking_uri: str, experiment_name: str, run_name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{escaped}'"
    )
    return runs[0] if runs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail", action="store_true", help=f"run with {FAILING_PARAMS}")
    parser.add_argument("--project-dir", type=Path, default=SAMPLE_PROJECT)
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: unique)")
    args = parser.parse_args(argv)

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    project_dir = args.project_dir.resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_name = args.run_name or f"sample-project-local-{stamp}-{uuid.uuid4().hex[:6]}"

    tracking_uri, experiment_name = project_tracking(project_dir)
    with tempfile.TemporaryDirectory(prefix="kfp-local-") as workspace:
        run_pipeline(project_dir, FAILING_PARAMS if args.fail else "", run_name, Path(workspace))

    run = find_run(tracking_uri, experiment_name, run_name)
    if run is None:
        print(
            f"No MLflow run named {run_name} at {tracking_uri}: the start step failed (see above)."
        )
        return 1
    expected = "FAILED" if args.fail else "FINISHED"
    note = run.data.tags.get(TAG_RUN_NOTE, "")
    print()
    print(f"MLflow run id: {run.info.run_id}")
    print(f"Status:        {run.info.status} (expected {expected})")
    print(
        f"Summary:       {note.splitlines()[0] if note else '(no summary: finalize did not run)'}"
    )
    print(f"Tracking URI:  {tracking_uri}")
    if tracking_uri.startswith(("http://", "https://")):
        where = f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}"
        print(f"Open it at:    {where}/runs/{run.info.run_id}")
    else:
        print(f"Open it with:  mlflow ui --backend-store-uri {tracking_uri}")
        print(f"               then experiment '{experiment_name}', run '{run_name}'")
    return 0 if run.info.status == expected else 1


if __name__ == "__main__":
    sys.exit(main())
