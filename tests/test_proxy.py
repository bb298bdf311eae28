"""The test proxy against a real MLflow server: what it counts and the faults clients see."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from tests.support.mlflow_server import MlflowServer
from tests.support.proxy import MlflowProxy

LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"
GET_RUN = "GET /api/2.0/mlflow/runs/get"


@pytest.fixture
def proxy(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowProxy]:
    """A proxy without latency; MLflow's client retries nothing unless a test says so."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    with MlflowProxy(mlflow_server.uri, latency_s=0.0) as running:
        yield running


@pytest.fixture
def run_id(mlflow_server: MlflowServer) -> str:
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("proxy-tests")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("proxy-tests")
    )
    return client.create_run(experiment_id).info.run_id


def test_counts_requests_bytes_and_endpoints_over_one_kept_alive_connection(
    proxy: MlflowProxy, mlflow_server: MlflowServer, run_id: str
) -> None:
    client = MlflowClient(proxy.uri)
    for i in range(5):
        client.set_tag(run_id, f"tag{i}", "x" * 100)
    client.get_run(run_id)
    proxy.wait_idle()

    stats = proxy.reset_stats()

    assert stats.requests == 6
    assert stats.by_endpoint == {"POST /api/2.0/mlflow/runs/set-tag": 5, GET_RUN: 1}
    assert stats.connections == 1
    assert stats.bytes_from_client > 5 * 100
    assert stats.bytes_to_client > 0
    assert stats.bytes_total == sum(r.bytes_from_client + r.bytes_to_client for r in stats.records)
    assert [r.status for r in stats.records] == [200] * 6
    assert proxy.stats().requests == 0
    assert MlflowClient(mlflow_server.uri).get_run(run_id).data.tags["tag4"] == "x" * 100


def test_latency_and_extra_latency_keep_answers_and_are_recorded(
    proxy: MlflowProxy, run_id: str
) -> None:
    proxy.latency_s = 0.01
    proxy.slow(0.05, count=1, path_contains="set-tag")
    client = MlflowClient(proxy.uri)

    client.set_tag(run_id, "slow", "1")
    client.set_tag(run_id, "normal", "1")
    proxy.wait_idle()

    assert [r.fault for r in proxy.stats().records] == ["delay", None]
    assert client.get_run(run_id).data.tags["slow"] == "1"


def test_injected_503_is_what_the_client_sees(proxy: MlflowProxy, run_id: str) -> None:
    proxy.fail(status=503, count=1)
    client = MlflowClient(proxy.uri)

    with pytest.raises(MlflowException, match="503"):
        client.set_tag(run_id, "lost", "1")
    proxy.wait_idle()

    assert proxy.stats().faults == 1
    assert "lost" not in client.get_run(run_id).data.tags


def test_503s_for_a_count_are_retried_through_by_the_client(
    proxy: MlflowProxy, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    proxy.fail(status=503, count=2, path_contains="log-batch")
    client = MlflowClient(proxy.uri)

    client.log_batch(run_id, params=[Param("alpha", "0.5")])
    proxy.wait_idle()

    stats = proxy.stats()
    assert stats.by_endpoint == {LOG_BATCH: 3}
    assert [r.status for r in stats.records] == [503, 503, 200]
    assert client.get_run(run_id).data.params["alpha"] == "0.5"


def test_503s_for_a_period_then_normal_service(proxy: MlflowProxy, run_id: str) -> None:
    proxy.fail(status=503, seconds=0.5)
    client = MlflowClient(proxy.uri)
    with pytest.raises(MlflowException, match="503"):
        client.get_run(run_id)

    time.sleep(0.6)

    assert client.get_run(run_id).info.run_id == run_id


def test_cut_response_fails_the_client_but_the_server_did_the_write(
    proxy: MlflowProxy, mlflow_server: MlflowServer, run_id: str
) -> None:
    proxy.cut(count=1)
    client = MlflowClient(proxy.uri)

    with pytest.raises(MlflowException, match="Connection"):
        client.set_tag(run_id, "landed", "yes")
    proxy.wait_idle()

    assert proxy.stats().records[0].fault == "cut"
    assert MlflowClient(mlflow_server.uri).get_run(run_id).data.tags["landed"] == "yes"
    assert client.get_run(run_id).data.tags["landed"] == "yes"  # next request is served


def test_reset_fails_the_client_and_the_server_never_sees_the_write(
    proxy: MlflowProxy, mlflow_server: MlflowServer, run_id: str
) -> None:
    proxy.reset(count=1)
    client = MlflowClient(proxy.uri)

    with pytest.raises(MlflowException, match="Connection"):
        client.set_tag(run_id, "never", "1")

    assert "never" not in MlflowClient(mlflow_server.uri).get_run(run_id).data.tags
    assert client.get_run(run_id).info.run_id == run_id


def test_down_refuses_connections_until_up(proxy: MlflowProxy, run_id: str) -> None:
    client = MlflowClient(proxy.uri)
    client.get_run(run_id)  # leaves a kept-alive connection that down() must drop

    proxy.down()
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.uri + "/health", timeout=5)
    with pytest.raises(MlflowException):
        client.get_run(run_id)

    proxy.up()
    assert client.get_run(run_id).info.run_id == run_id


def test_down_for_a_period_comes_back_on_the_same_port(proxy: MlflowProxy, run_id: str) -> None:
    port = proxy.port
    proxy.down(seconds=0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.uri + "/health", timeout=5)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if requests.get(proxy.uri + "/health", timeout=5).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)

    assert proxy.port == port
    assert MlflowClient(proxy.uri).get_run(run_id).info.run_id == run_id


def test_streams_artifact_uploads_and_downloads(
    proxy: MlflowProxy, run_id: str, tmp_path: Path
) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    source = tmp_path / "model.bin"
    source.write_bytes(payload)
    client = MlflowClient(proxy.uri)

    client.log_artifact(run_id, str(source), "models")
    # A chunked upload (no Content-Length) to the same artifact API.
    pieces = (payload[i : i + 100_000] for i in range(0, len(payload), 100_000))
    artifact_uri = client.get_run(run_id).info.artifact_uri
    relative = artifact_uri.split("mlflow-artifacts:/", 1)[1]
    upload = requests.put(
        f"{proxy.uri}/api/2.0/mlflow-artifacts/artifacts/{relative}/chunked.bin",
        data=pieces,
        timeout=60,
    )
    upload.raise_for_status()
    downloaded = client.download_artifacts(run_id, "models/model.bin", str(tmp_path / "d1"))
    chunked = client.download_artifacts(run_id, "chunked.bin", str(tmp_path / "d2"))
    proxy.wait_idle()

    assert Path(downloaded).read_bytes() == payload
    assert Path(chunked).read_bytes() == payload
    stats = proxy.stats()
    assert stats.bytes_from_client > 2 * len(payload)
    assert stats.bytes_to_client > 2 * len(payload)
