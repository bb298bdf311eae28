"""Shared fixtures: real MLflow servers for the session (sqlite; PostgreSQL only for the tests
that ask for it), a fresh project copy per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
