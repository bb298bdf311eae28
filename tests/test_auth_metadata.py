"""The providers as they run on Vertex AI: credentials from the GCE metadata server.

google-auth reads ``GCE_METADATA_HOST`` when its metadata module is imported, so each case
runs in a fresh interpreter started with the fake metadata server in its environment, as a
pipeline container would be.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.auth_stack import AUDIENCE, AuthStack, google_free_env, run_python
from tests.support.fake_google import DEFAULT_SERVICE_ACCOUNT, verify_jwt
from tests.support.mlflow_server import free_port

TARGET_ACCOUNT = "pipeline-tracker@fake-project.iam.gserviceaccount.com"

# Installs the provider like the hooks do, then keeps logging through the proxy for a while.
CONTAINER = """
import json, sys, time
from mlflow import MlflowClient
from kedro_vertex_hooks.auth import install_header_provider
from kedro_vertex_hooks.config import RequestHeaderProviderConfig, parse_section

config = parse_section(RequestHeaderProviderConfig, json.loads(sys.argv[1]), "argv")
installed = install_header_provider(config)
client = MlflowClient(sys.argv[2])
run = client.create_run(client.create_experiment(sys.argv[3]))
deadline, step = time.monotonic() + float(sys.argv[4]), 0
while time.monotonic() < deadline:
    client.log_metric(run.info.run_id, "heartbeat", step, step=step)
    step += 1
print(json.dumps({"requests": step + 2, "token": installed.provider.request_headers()[
    installed.provider.header].split()[1]}))
"""

FAIL_FAST = """
import json, sys
from kedro_vertex_hooks.auth import AuthError, install_header_provider
from kedro_vertex_hooks.config import RequestHeaderProviderConfig, parse_section
try:
    config = parse_section(RequestHeaderProviderConfig, json.loads(sys.argv[1]), "argv")
    install_header_provider(config)
except AuthError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


@pytest.fixture
def metadata_env(stack: AuthStack, tmp_path: Path) -> dict[str, str]:
    stack.reset()
    return google_free_env(tmp_path, **stack.google.metadata_env())


def _config(provider_type: str, google_iam_endpoint: str) -> str:
    init_kwargs = {"client_id": AUDIENCE}
    if provider_type == "gcp-iam":
        init_kwargs |= {"service_account": TARGET_ACCOUNT, "iam_endpoint": google_iam_endpoint}
    return json.dumps({"type": provider_type, "init_kwargs": init_kwargs})


@pytest.mark.parametrize(
    ("provider_type", "endpoint", "email"),
    [("gcp-oauth", "identity", DEFAULT_SERVICE_ACCOUNT), ("gcp-iam", "iam", TARGET_ACCOUNT)],
)
def test_container_stays_authenticated_over_several_token_lifetimes(
    stack: AuthStack, metadata_env: dict[str, str], provider_type: str, endpoint: str, email: str
) -> None:
    stack.google.token_lifetime_s = 3
    config = _config(provider_type, stack.google.iam_endpoint)

    container = run_python(
        CONTAINER, metadata_env, config, stack.proxy.url, f"metadata-{provider_type}", "7"
    )

    assert container.returncode == 0, container.stderr[-3000:]
    report = json.loads(container.stdout)
    assert stack.proxy.rejections == []
    assert stack.proxy.accepted == report["requests"]
    assert len(stack.proxy.tokens_seen) >= 3
    assert stack.google.counts == {endpoint: len(stack.proxy.tokens_seen)}
    claims = verify_jwt(stack.google.public_key, report["token"])
    assert (claims["aud"], claims["email"]) == (AUDIENCE, email)


def test_refused_token_request_stops_the_container_before_any_mlflow_call(
    stack: AuthStack, metadata_env: dict[str, str]
) -> None:
    stack.google.fail_next(10)

    container = run_python(FAIL_FAST, metadata_env, _config("gcp-oauth", ""))

    assert container.returncode == 3, container.stderr[-3000:]
    message = container.stdout
    assert "Request header provider 'gcp-oauth'" in message
    assert f"audience '{AUDIENCE}'" in message
    assert "403" in message and "getOpenIdToken" in message
    assert stack.proxy.accepted == 0


def test_no_credentials_at_all_is_explained(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    env = google_free_env(
        tmp_path, GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed, GCE_METADATA_TIMEOUT="1"
    )

    container = run_python(FAIL_FAST, env, _config("gcp-oauth", ""))

    assert container.returncode == 3, container.stderr[-3000:]
    assert "Request header provider 'gcp-oauth'" in container.stdout
    assert "Neither metadata server or valid service account credentials" in container.stdout
