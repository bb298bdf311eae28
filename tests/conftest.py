"""Shared fixtures: real MLflow servers for the session (sqlite; PostgreSQL only for the tests
that ask for it), a fresh project copy per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.auth_stack import AuthStack, restore_provider_registry
from tests.support.mlflow_server import MlflowServer
from tests.support.postgres import PostgresCluster
from tests.support.project import Project

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server --workers 1`` on its own throwaway PostgreSQL cluster: the store
    production servers use, where concurrent writers race for real (sqlite serialises them).
    Per xdist worker, and only in a worker that runs a test asking for it."""
    with PostgresCluster() as postgres:
        server = MlflowServer(
            tmp_path_factory.mktemp("mlflow-postgres"), backend_store_uri=postgres.sqlalchemy_uri
        )
        server.start(timeout_s=240)  # creating MLflow's schema: ~25 s, more on a busy machine
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def client(mlflow_server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.uri)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.copy(tmp_path / "project")


# The IAP-like proxy and fake Google of the auth tests (one per test module).
@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


@pytest.fixture
def adc(stack: AuthStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AuthStack:
    """Application Default Credentials = a key file served by the fake; counters reset."""
    stack.reset()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", str(stack.google.write_key_file(tmp_path / "key.json"))
    )
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return stack


@pytest.fixture
def registry() -> Iterator[None]:
    yield from restore_provider_registry()
