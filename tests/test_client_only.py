"""Without kedro-mlflow, on the client-only MLflow (mlflow-skinny): the hook options log
sample_project's metrics and report into the shared run, one process per node."""

from __future__ import annotations

import subprocess

from tests.support.project import SAMPLE_NODES, SKINNY_PYTHON, Project, base_env
from tests.support.tracked import artifact_json, every_run_id, local_json, node_statuses


def skinny(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SKINNY_PYTHON), "-c", code], capture_output=True, text=True, timeout=60
    )


def test_the_client_only_install_lacks_the_server_stack_and_kedro_mlflow():
    assert SKINNY_PYTHON.exists(), "run scripts/bootstrap.sh to create .venv-skinny"
    client_only = skinny(
        "import importlib.metadata as m, mlflow; print(m.version('mlflow-skinny'))"
    )
    assert client_only.returncode == 0, client_only.stderr
    for module in ("sqlalchemy", "kedro_mlflow", "mlflow.server"):
        missing = skinny(f"import {module}")
        assert missing.returncode != 0, f"{module} is importable in .venv-skinny"
        assert "ModuleNotFoundError" in missing.stderr


def test_per_node_steps_on_mlflow_skinny_log_the_hook_option_datasets(
    client, mlflow_server, tmp_path
):
    project = Project.copy(tmp_path / "project")
    run_id = client.create_run(client.create_experiment("client-only")).info.run_id
    runs_before = every_run_id(client)
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    steps = [
        SAMPLE_NODES[:7],  # data and both trainings in one process
        ("evaluate_linear",),
        ("evaluate_tree",),
        ("select_model", "write_report"),
        ("quality_gate", "publish"),
    ]

    statuses = []
    for nodes in steps:
        result = project.run_nodes(nodes, env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "kedro_mlflow" not in result.stdout + result.stderr
        statuses.append(client.get_run(run_id).info.status)

    assert statuses == ["RUNNING"] * 4 + ["FINISHED"]
    run = client.get_run(run_id)
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")
    assert run.data.params["model.linear.regularization.l2"] == "0.01"
    linear = local_json(project.root, "linear_metrics")
    tree = local_json(project.root, "tree_metrics")
    assert {k: v for k, v in run.data.metrics.items() if not k.startswith("kedro.")} == {
        "linear_metrics.mae": linear["mae"],
        "linear_metrics.rows": linear["rows"],
        "tree_metrics.mae": tree["mae"],
        "tree_metrics.rows": tree["rows"],
    }
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.json"]
    downloaded = artifact_json(client, run_id, "report/report.json", tmp_path / "download")
    assert downloaded == local_json(project.root, "report")
    assert every_run_id(client) == runs_before
