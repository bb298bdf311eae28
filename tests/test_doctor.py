"""`kedro vertex-hooks doctor` tells a working set-up from a broken one, in words."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests.support.auth_stack import AUDIENCE, AuthStack, google_free_env


@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


def doctor(project, env, provider: dict | None, uri: str):
    server = {"mlflow_tracking_uri": uri}
    if provider:
        server["request_header_provider"] = provider
    (project.root / "conf" / "local" / "mlflow.yml").write_text(yaml.safe_dump({"server": server}))
    result = project.run(["vertex-hooks", "doctor"], env)
    return result.returncode, result.stdout, result.stderr


def test_doctor_reports_a_working_authenticated_set_up(stack, project, tmp_path):
    stack.reset()
    env = google_free_env(tmp_path, **stack.google.metadata_env())
    provider = {"type": "gcp-oauth", "init_kwargs": {"client_id": AUDIENCE}}
    code, out, err = doctor(project, env, provider, stack.proxy.url)
    assert code == 0, out + err
    assert f"Tracking URI: {stack.proxy.url}" in out
    assert "Node steps:   REST, without MLflow" in out
    assert "request header provider: gcp-oauth" in out
    assert f"audience: {AUDIENCE}" in out
    assert "token expires:" in out
    assert "answered an authenticated call" in out
    assert "header: Authorization: Bearer " in out
    assert re.search(r"eyJ[\w-]{20,}\.", out + err) is None  # the token itself never shows


def test_doctor_explains_a_gate_that_refuses_requests_without_a_provider(stack, project, tmp_path):
    stack.reset()
    code, out, err = doctor(project, google_free_env(tmp_path), None, stack.proxy.url)
    assert code == 1
    assert "request header provider: none" in out
    error_lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "401" in error_lines[0]
    assert "Traceback" not in err


def test_doctor_names_an_unreachable_server(project, tmp_path):
    code, _out, err = doctor(project, google_free_env(tmp_path), None, "http://127.0.0.1:9")
    assert code == 1
    assert "the tracking server cannot be reached" in err
    assert "http://127.0.0.1:9" in err
    assert "Traceback" not in err


def test_loading_the_cli_plugin_imports_none_of_the_tracking_machinery():
    """Kedro loads the ``vertex-hooks`` commands for every command of every project in the
    image, tracked or not: that must cost no more than the command definitions."""
    probe = (
        "import sys, kedro_vertex_hooks.cli, kedro_vertex_hooks.workers\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kedro_vertex_hooks.', 'msgspec'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == (
        "['kedro_vertex_hooks.cli', 'kedro_vertex_hooks.naming', 'kedro_vertex_hooks.workers']"
    )
