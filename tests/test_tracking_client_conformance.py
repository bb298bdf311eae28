"""The REST client and MLflow's own client, held to the same behaviour.

Both implement :class:`kedro_vertex_hooks.tracking_client.TrackingClient`. The same calls go
through each of them, behind the recording proxy, to the real server; what the run then holds,
the errors raised, the requests sent and the ``Authorization`` header they carried must be the
same, for each credential setting MLflow's client honours and with the server answering 503.
What the REST client does not reproduce (SigV4, ``~/.mlflow/credentials``, auth plugins) is
routed to MLflow's client; that choice is checked too.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kedro_vertex_hooks.mlflow_client import MlflowTrackingClient
from kedro_vertex_hooks.rest_client import RestTrackingClient, rest_client_unsuitable
from kedro_vertex_hooks.tracking_client import Metric, TrackingClient
from tests.support.proxy import MlflowProxy

CREDENTIALS = {
    "none": ({}, None),
    "token": ({"MLFLOW_TRACKING_TOKEN": "t0ken"}, "Bearer t0ken"),
    "basic": (
        {"MLFLOW_TRACKING_USERNAME": "ana", "MLFLOW_TRACKING_PASSWORD": "s3cret"},
        "Basic " + base64.b64encode(b"ana:s3cret").decode(),
    ),
}
WIDE = {f"wide.{i:03d}": str(i) for i in range(150)}  # more than one batch's 100 params


@pytest.fixture(scope="module")
def proxy(mlflow_server) -> Iterator[MlflowProxy]:
    with MlflowProxy(mlflow_server.uri, latency_s=0) as running:
        yield running


@pytest.fixture(autouse=True)
def http_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy: MlflowProxy):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials of the machine's
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    proxy.clear_faults()
    proxy.reset_stats()


def make(kind: str, uri: str) -> TrackingClient:
    return RestTrackingClient(uri) if kind == "rest" else MlflowTrackingClient(tracking_uri=uri)


def error_code(action) -> str:
    with pytest.raises(Exception) as caught:
        action()
    return getattr(caught.value, "error_code", type(caught.value).__name__)


def exercise(client: TrackingClient, proxy: MlflowProxy) -> dict:
    """Every call the hooks make, as they make it; what a user would then see."""
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    found = client.get_experiment_by_name(name)
    run = client.create_run(experiment_id, tags={"vertexai_run_id": name}, run_name="shared")
    run_id = run.info.run_id
    history = [Metric("kedro.node_completed", 1.0, 1_700_000_000_000 + i, i) for i in range(3)]
    client.log_values(
        run_id, params={"lr": "0.1", **WIDE}, tags={"kedro.latest_node": "train"},
        metrics=[Metric("mae", 1.5, 1_700_000_000_000), *history],
    )  # fmt: skip
    info = client.touch_run(run_id)
    same_job = client.search_runs(
        [experiment_id], filter_string=f"tags.vertexai_run_id = '{name}'", max_results=10
    )
    changed = error_code(
        lambda: client.log_values(run_id, params={"lr": "0.2"}, tags={}, metrics=[])
    )
    client.set_terminated(run_id, "FAILED")
    proxy.fail(503, count=1, path_contains="runs/get")
    read = client.get_run(run_id)
    missing = error_code(lambda: client.get_run(uuid.uuid4().hex))
    missing_touched = error_code(lambda: client.touch_run(uuid.uuid4().hex))
    points = client.get_metric_history(run_id, "kedro.node_completed")
    client.delete_run(run_id)
    deleted = client.get_run(run_id)
    deleted_touched = client.touch_run(run_id)
    proxy.wait_idle()
    records = proxy.stats().records
    return {
        "experiment found": found.experiment_id == experiment_id,
        "missing experiment": client.get_experiment_by_name(f"{name}-missing"),
        "created": (run.info.status, run.info.experiment_id == experiment_id),
        "same job": [r.info.run_id for r in same_job] == [run_id],
        "changed param": changed,
        "status": read.info.status,
        "params": dict(read.data.params),
        "tags": {
            k: v.replace(name, "<name>")
            for k, v in read.data.tags.items()
            if not k.startswith("mlflow.")
        },
        "run name": read.info.run_name,
        "metrics": dict(read.data.metrics),
        "touched": (info.status, info.lifecycle_stage, info.experiment_id == experiment_id),
        "history": sorted((p.step, p.value, p.timestamp) for p in points),
        "missing run": missing,
        "missing run touched": missing_touched,
        "after delete": (deleted.info.lifecycle_stage, deleted_touched.lifecycle_stage),
        "requests": sorted({r.endpoint for r in records}),
        "retried 503": sum(r.status == 503 for r in records),
        "authorization": {r.authorization for r in records},
    }


@pytest.mark.parametrize("credentials", sorted(CREDENTIALS))
def test_both_clients_send_the_same_requests_and_leave_the_same_run(
    credentials, proxy, monkeypatch
):
    env, expected_header = CREDENTIALS[credentials]
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    outcomes = {}
    for kind in ("rest", "mlflow"):
        proxy.reset_stats()
        outcomes[kind] = exercise(make(kind, proxy.uri), proxy)

    rest, mlflow = outcomes["rest"], outcomes["mlflow"]
    assert rest == mlflow
    assert rest["status"] == "FAILED" and rest["params"]["lr"] == "0.1"
    assert len(rest["params"]) == 151
    assert rest["metrics"] == {"mae": 1.5, "kedro.node_completed": 1.0}
    assert rest["touched"] == ("RUNNING", "active", True)
    assert rest["history"] == [(i, 1.0, 1_700_000_000_000 + i) for i in range(3)]
    assert rest["changed param"] == "INVALID_PARAMETER_VALUE"
    assert rest["missing run"] == rest["missing run touched"] == "RESOURCE_DOES_NOT_EXIST"
    assert rest["after delete"] == ("deleted", "deleted") and rest["retried 503"] == 1
    assert rest["authorization"] == {expected_header}


def test_what_only_mlflows_client_does_is_routed_to_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_AWS_SIGV4"):
        monkeypatch.delenv(name, raising=False)
    uri = "https://mlflow.example.com"
    assert rest_client_unsuitable(uri) is None
    assert "not http(s)" in (rest_client_unsuitable("sqlite:///mlflow.db") or "")
    monkeypatch.setenv("MLFLOW_TRACKING_AWS_SIGV4", "true")
    assert rest_client_unsuitable(uri) == "MLFLOW_TRACKING_AWS_SIGV4 is set"
    monkeypatch.delenv("MLFLOW_TRACKING_AWS_SIGV4")
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username=a\n")
    assert rest_client_unsuitable(uri) == "~/.mlflow/credentials exists"


def test_another_packages_mlflow_header_provider_routes_steps_to_mlflows_client(
    monkeypatch, tmp_path
):
    """Its headers come from MLflow's registry, which only MlflowClient consults."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_AWS_SIGV4"):
        monkeypatch.delenv(name, raising=False)
    uri = "https://mlflow.example.com"
    assert rest_client_unsuitable(uri) is None
    dist_info = tmp_path / "site" / "corp_mlflow_auth-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: corp-mlflow-auth\n")
    (dist_info / "entry_points.txt").write_text(
        "[console_scripts]\ncorp = corp_auth:main\n\n"
        "[mlflow.request_header_provider]\ncorp-iap = corp_auth:IapHeaders\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert rest_client_unsuitable(uri) == (
        "other MLflow request header providers are installed (corp-iap)"
    )
