"""The supported MLflow matrix, as docs/kedro-vertexai.md states it, run for real.

Clients: the oldest and newest release of each line (2.14.3 and 2.22.5, 3.0.1 and 3.17.2);
servers: one of each line (2.22.5 from the kedro-vertexai image, 3.17.2). Every pair runs the
run's whole life through that client's ``MlflowClient``: ``kedro vertex-hooks start-run``, two
node steps resuming the run by id (``use_mlflow_client=True``), ``kedro vertex-hooks finalize``.
The install checks: each image resolves to one consistent MLflow, without a version warning.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.project import (
    REPO,
    SAMPLE_NODES,
    SKINNY_PYTHON,
    Project,
    base_env,
)
from tests.support.tracked import assert_finished_with_every_node_completed
from tests.support.vertexai import VERTEXAI_PYTHON

CLIENTS = {
    "2.14.3": REPO / ".venv-mlflow-2.14" / "bin" / "python",
    "2.22.5": VERTEXAI_PYTHON,  # the kedro-vertexai image: pip's pick for mlflow<3
    "3.0.1": REPO / ".venv-mlflow-3.0" / "bin" / "python",
    "3.17.2": REPO / ".venv" / "bin" / "python",
}
SERVERS = {"2.22.5": VERTEXAI_PYTHON, "3.17.2": REPO / ".venv" / "bin" / "python"}
IMAGES = {
    "kedro-vertexai[mlflow]==1.0.0": VERTEXAI_PYTHON,
    "mlflow 3": REPO / ".venv" / "bin" / "python",
    "mlflow-skinny 3": SKINNY_PYTHON,
    "mlflow-skinny 2.14": CLIENTS["2.14.3"],
    "mlflow-skinny 3.0": CLIENTS["3.0.1"],
}
VERSIONS = (
    "import importlib.metadata as m\n"
    "for d in ('mlflow', 'mlflow-skinny'):\n"
    "    try: print(d, m.version(d))\n"
    "    except m.PackageNotFoundError: pass\n"
)


def run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env=base_env(),
    )  # fmt: skip


@pytest.fixture(scope="module", params=sorted(SERVERS), ids=lambda v: f"server-{v}")
def server(request, tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(
        tmp_path_factory.mktemp(f"server-{request.param}"), python=SERVERS[request.param]
    ).start()
    yield request.param, server
    server.stop()


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_image_holds_one_consistent_mlflow(image):
    python = IMAGES[image]
    check = run(python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    versions = dict(line.split() for line in run(python, "-c", VERSIONS).stdout.splitlines())
    assert len(set(versions.values())) == 1, f"MLflow distributions over each other: {versions}"
    imported = run(python, "-c", "import mlflow, kedro_vertex_hooks; print(mlflow.__version__)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == next(iter(versions.values()))
    assert "are different" not in imported.stderr and "Warning" not in imported.stderr, (
        imported.stderr
    )


@pytest.mark.parametrize("version", sorted(CLIENTS), ids=lambda v: f"client-{v}")
def test_the_run_lives_and_ends_through_each_client_against_each_server(version, server, tmp_path):
    from mlflow import MlflowClient

    server_version, mlflow_server = server
    python = CLIENTS[version]
    assert re.search(rf"mlflow\S* {re.escape(version)}", run(python, "-c", VERSIONS).stdout)
    project = Project.copy(tmp_path / "project", python=python)
    settings = project.root / "src" / "sample_project" / "settings.py"
    settings.write_text(
        settings.read_text().replace("MlflowRunHooks(", "MlflowRunHooks(use_mlflow_client=True,")
    )
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    job = f"matrix-{version}-{server_version}"

    output = tmp_path / "run_id"
    started = project.run(
        ["vertex-hooks", "start-run", "--job-id", job, "--job-name", job, "--output", str(output)],
        env,
    )
    assert started.returncode == 0, (started.stdout + started.stderr)[-3000:]
    run_id = output.read_text().strip()
    step_env = {**env, "MLFLOW_RUN_ID": run_id, "KEDRO_CONFIG_RUN_ID": job}
    client = MlflowClient(mlflow_server.uri)
    statuses = []
    for args in (["--nodes", SAMPLE_NODES[0]], ["--from-nodes", SAMPLE_NODES[1]]):
        step = project.run(["run", *args], step_env)
        assert step.returncode == 0, (step.stdout + step.stderr)[-3000:]
        statuses.append(client.get_run(run_id).info.status)
    closed = project.run(["vertex-hooks", "finalize", "--run-id", run_id], env)
    assert closed.returncode == 0, (closed.stdout + closed.stderr)[-3000:]

    assert statuses == ["RUNNING", "FINISHED"]
    assert_finished_with_every_node_completed(client, run_id)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"report"}
