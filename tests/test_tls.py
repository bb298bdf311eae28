"""An https tracking server with a private certificate: the steps' REST calls honour MLflow's
TLS variables, and an untrusted certificate stops the step at once with the cause named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.project import SAMPLE_NODES, base_env
from tests.support.proxy import MlflowProxy
from tests.support.tls import self_signed_server_context
from tests.support.tracked import node_statuses


@pytest.fixture(scope="module")
def https(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    context, certificate = self_signed_server_context(tmp_path_factory.mktemp("tls"))
    with MlflowProxy(mlflow_server.uri, latency_s=0, tls=context) as proxy:
        yield proxy.uri, certificate


@pytest.mark.parametrize("trust", ["server-cert-path", "insecure-tls"])
def test_steps_reach_an_https_server_the_way_mlflow_is_told_to(
    client, project, https, trust
) -> None:
    uri, certificate = https
    run_id = client.create_run(client.create_experiment(f"tls-{trust}")).info.run_id
    env = base_env(MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id)
    if trust == "server-cert-path":
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(certificate)
    else:
        env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"

    for nodes in (SAMPLE_NODES[:9], SAMPLE_NODES[9:]):  # the second writes the report artifact
        result = project.run_nodes(nodes, env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "given up" not in result.stdout + result.stderr

    assert client.get_run(run_id).info.status == "FINISHED"
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.json"]


def test_an_untrusted_certificate_stops_the_step_at_once_naming_it(client, project, https):
    uri, _ = https
    run_id = client.create_run(client.create_experiment("tls-untrusted")).info.run_id
    env = base_env(MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id)

    result = project.run(["run"], env)

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"Cannot resolve the MLflow run (MLFLOW_RUN_ID={run_id}" in output, output[-3000:]
    assert "certificate verify failed" in output and uri in output
    assert "Traceback" not in output and "Running node" not in output
    assert "retrying for up to" not in output  # not waited out like an outage
