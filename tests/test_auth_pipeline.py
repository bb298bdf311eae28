"""End to end: sample_project tracked through the IAP-like proxy with short-lived tokens.

Every step is a real ``kedro run`` with credentials from the fake metadata server, as on
Vertex AI. The proxy refuses any request without exactly one valid, unexpired token for its
audience, so a refresh gap, a doubled header or a missing provider in a worker shows up as a
rejected request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.auth_stack import (
    AUDIENCE,
    AuthStack,
    google_free_env,
    install_third_party_provider,
)
from tests.support.project import FULL_PYTHON, SAMPLE_NODES, SAMPLE_STEPS, Project
from tests.support.tracked import node_statuses

REPO = Path(__file__).resolve().parents[1]
IAM_ACCOUNT = "pipeline-tracker@fake-project.iam.gserviceaccount.com"
OAUTH_PATH = "kedro_vertex_hooks.auth.gcp.MLFlowGoogleOauthRequestHeaderProvider"


@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_third_party_provider(tmp_path_factory.mktemp("acme") / "site")


@pytest.fixture
def env(stack: AuthStack, acme_site: Path, tmp_path: Path) -> dict[str, str]:
    """A container's environment: the fake metadata server, no other Google credentials."""
    stack.reset(token_lifetime_s=3)
    python_path = os.pathsep.join([str(acme_site), str(REPO)])
    return google_free_env(tmp_path, PYTHONPATH=python_path, **stack.google.metadata_env())


def write_mlflow_yml(project: Project, conf_env: str, stack: AuthStack, provider: dict) -> None:
    folder = project.root / "conf" / conf_env
    folder.mkdir(parents=True, exist_ok=True)
    server = {"mlflow_tracking_uri": stack.proxy.url, "request_header_provider": provider}
    (folder / "mlflow.yml").write_text(yaml.safe_dump({"server": server}))


def provider_configs(stack: AuthStack) -> dict[str, dict]:
    """One Kedro environment per provider: the two built-ins and the third-party one."""
    return {
        "oauth": {"type": "gcp-oauth", "init_kwargs": {"client_id": AUDIENCE}},
        "iam": {
            "type": "gcp-iam",
            "init_kwargs": {
                "client_id": AUDIENCE,
                "service_account": IAM_ACCOUNT,
                "iam_endpoint": stack.google.iam_endpoint,
            },
        },
        "acme": {
            "type": "acme-id-token",
            "init_kwargs": {"audience": AUDIENCE, "my_auth_info": "team-a"},
        },
    }


def assert_ok(code: int, output: str) -> None:
    assert code == 0, output[-4000:]


def assert_every_node_completed(client, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")


def test_per_node_steps_with_each_provider_have_no_rejected_request(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    project = Project.copy(tmp_path / "project", python=FULL_PYTHON)  # kedro-mlflow's image
    configs = provider_configs(stack)
    for conf_env, provider in configs.items():
        write_mlflow_yml(project, conf_env, stack, provider)
    run_id = client.create_run(client.create_experiment("auth-per-node")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id
    rotation = list(configs)

    for index, step in enumerate(SAMPLE_STEPS):  # each container gets the next provider
        conf_env = rotation[index % len(rotation)]
        results = project.run_together([[name] for name in step], env, "--env", conf_env)
        for code, output in results:
            assert_ok(code, output)

    assert_every_node_completed(client, run_id)
    assert stack.proxy.rejections == []
    assert stack.proxy.accepted >= 2 * len(SAMPLE_NODES)  # each one-node step: read, write
    assert stack.google.counts["iam"] >= 3  # the IAM provider's containers
    assert stack.google.counts["identity"] >= 6  # gcp-oauth's and acme's containers
    assert len(stack.proxy.tokens_seen) >= len(SAMPLE_NODES)


def test_client_only_image_authenticates_over_rest_and_when_mlflow_is_imported_late(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    """mlflow-skinny without kedro-mlflow: steps talk REST with the provider's token, and the
    report's artifact upload, which imports MLflow mid-step, gets the same provider through
    the package's ``mlflow.request_header_provider`` entry point."""
    project = Project.copy(tmp_path / "project")
    write_mlflow_yml(project, "local", stack, provider_configs(stack)["oauth"])
    run_id = client.create_run(client.create_experiment("auth-client-only")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id

    for step in SAMPLE_STEPS:
        results = project.run_together([[name] for name in step], env)
        for code, output in results:
            assert_ok(code, output)
            assert "given up" not in output, output[-4000:]

    assert_every_node_completed(client, run_id)
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.json"]
    assert stack.proxy.rejections == []
    assert stack.google.counts["identity"] >= len(SAMPLE_STEPS)


def test_parallel_runner_spawn_workers_authenticate_as_tokens_expire(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    project = Project.copy(tmp_path / "project")
    write_mlflow_yml(project, "local", stack, provider_configs(stack)["oauth"])
    run_id = client.create_run(client.create_experiment("auth-spawn")).info.run_id
    env.update(MLFLOW_RUN_ID=run_id, KEDRO_MP_CONTEXT="spawn")

    result = project.run(["run", "--runner", "ParallelRunner"], env)

    assert_ok(result.returncode, result.stdout + result.stderr)
    assert_every_node_completed(client, run_id)
    assert stack.proxy.rejections == []
    assert len(stack.proxy.tokens_seen) >= 3


def test_kedro_mlflow_hook_registering_the_same_provider_sends_one_authorization(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    project = Project.copy(tmp_path / "project", python=FULL_PYTHON)
    settings = project.root / "src" / "sample_project" / "settings.py"
    settings.write_text(settings.read_text().replace("DISABLE_HOOKS_FOR_PLUGINS", "_NOT_USED"))
    provider = {"type": OAUTH_PATH, "init_kwargs": {"client_id": AUDIENCE}}
    write_mlflow_yml(project, "local", stack, provider)
    run_id = client.create_run(client.create_experiment("auth-kedro-mlflow")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id

    result = project.run(["run"], env)

    assert_ok(result.returncode, result.stdout + result.stderr)
    assert_every_node_completed(client, run_id)
    assert stack.proxy.rejections == []
    # kedro-mlflow's hook set up its experiment through MLflow's client, with its own instance
    # of the provider registered beside ours: every such request went through with one header,
    # and ours served both clients (its instance is skipped, so one token was fetched).
    kedro_mlflow_setup = ("mlflow-python-client", "/api/2.0/mlflow/experiments/get-by-name")
    assert stack.proxy.accepted_calls[kedro_mlflow_setup] >= 1, stack.proxy.accepted_calls
    assert stack.google.counts["identity"] == 1, stack.google.counts


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        (
            {
                "type": "tests.support.header_providers.FailsToFetch",
                "init_kwargs": {"client_id": AUDIENCE, "secret": "SECRET"},
            },
            [
                "Request header provider 'tests.support.header_providers.FailsToFetch'",
                f"audience '{AUDIENCE}'",
                "could not produce its header: RuntimeError: token endpoint said 403",
            ],
        ),
        (
            {"type": "gcp-oath", "init_kwargs": {"client_id": AUDIENCE}},
            [
                "Unknown request header provider type 'gcp-oath'",
                "Registered providers",
                "acme-id-token, gcp-iam, gcp-oauth",
            ],
        ),
    ],
    ids=["broken-provider", "unknown-type"],
)
def test_unusable_provider_stops_kedro_run_before_the_first_node(
    stack: AuthStack,
    env: dict[str, str],
    client,
    tmp_path: Path,
    provider: dict,
    expected: list[str],
) -> None:
    secret = stack.google.mint_id_token(AUDIENCE, IAM_ACCOUNT)
    if "secret" in provider["init_kwargs"]:
        provider["init_kwargs"]["secret"] = secret
    project = Project.copy(tmp_path / "project")
    write_mlflow_yml(project, "local", stack, provider)
    run_id = client.create_run(client.create_experiment(f"auth-{provider['type']}")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id

    result = project.run(["run"], env)

    printed = result.stdout + result.stderr
    output = " ".join(printed.split())
    assert result.returncode != 0
    for fragment in expected:
        assert fragment in output, printed[-4000:]
    assert secret not in printed
    assert "Completed node" not in output and "Running node" not in output
    assert stack.proxy.accepted == 0
    assert node_statuses(client, run_id) == {}


def test_a_token_the_proxy_refuses_stops_the_step_with_the_cause_in_words(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    project = Project.copy(tmp_path / "project")
    provider = {"type": "gcp-oauth", "init_kwargs": {"client_id": "another-client.apps"}}
    write_mlflow_yml(project, "local", stack, provider)
    run_id = client.create_run(client.create_experiment("auth-refused")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id

    result = project.run(["run"], env)

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"Cannot resolve the MLflow run (MLFLOW_RUN_ID={run_id}" in output, output[-3000:]
    assert "answered HTTP 401" in output and "'another-client.apps'" in output
    assert "Traceback" not in output
    assert "Running node" not in output
    # Refused once, not retried: a refusal is not an outage.
    assert [r.reason.split(" is not ")[0] for r in stack.proxy.rejections] == [
        "audience 'another-client.apps'"
    ]


def test_mlflow_yml_server_credentials_are_exported_as_kedro_mlflow_does(
    stack: AuthStack, env: dict[str, str], client, tmp_path: Path
) -> None:
    """``server.credentials`` names a credentials.yml entry of environment variables; here a
    bearer token the IAP-like proxy accepts, with no request header provider configured."""
    token = stack.google.mint_id_token(AUDIENCE, IAM_ACCOUNT, lifetime_s=600)
    project = Project.copy(tmp_path / "project")
    server = {"mlflow_tracking_uri": stack.proxy.url, "credentials": "mlflow_creds"}
    (project.root / "conf" / "local" / "mlflow.yml").write_text(yaml.safe_dump({"server": server}))
    credentials = {"mlflow_creds": {"MLFLOW_TRACKING_TOKEN": token}}
    (project.root / "conf" / "local" / "credentials.yml").write_text(yaml.safe_dump(credentials))
    run_id = client.create_run(client.create_experiment("auth-credentials")).info.run_id
    env["MLFLOW_RUN_ID"] = run_id

    outputs = []
    for nodes in (SAMPLE_NODES[:6], SAMPLE_NODES[6:]):
        result = project.run_nodes(nodes, env)
        outputs.append(result.stdout + result.stderr)
        assert_ok(result.returncode, outputs[-1])

    assert_every_node_completed(client, run_id)
    assert stack.proxy.rejections == [] and stack.proxy.tokens_seen == {token}
    assert all(token not in output for output in outputs)
