"""Installing a provider: resolution, fail-fast checks, one registration per process.

MLflow's real request-header registry is used throughout; "one registration" is checked
where a user would notice it: the IAP-like proxy refuses a request with two credentials.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking.request_header.registry import (
    _request_header_provider_registry,
    resolve_request_headers,
)

from kedro_vertex_hooks.auth import (
    AuthError,
    ensure_single_registration,
    explain_refusal,
    install_header_provider,
    installed_provider,
    registered_provider_names,
)
from kedro_vertex_hooks.auth.gcp import MLFlowGoogleOauthRequestHeaderProvider
from kedro_vertex_hooks.config import RequestHeaderProviderConfig, as_plain, parse_section
from tests.support.auth_stack import (
    AUDIENCE,
    AuthStack,
    google_free_env,
    install_third_party_provider,
    restore_provider_registry,
    run_python,
)
from tests.support.project import SKINNY_PYTHON

OAUTH_PATH = "kedro_vertex_hooks.auth.gcp.MLFlowGoogleOauthRequestHeaderProvider"
OAUTH = RequestHeaderProviderConfig(type="gcp-oauth", init_kwargs={"client_id": AUDIENCE})


@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The acme-mlflow-auth distribution, pip-installed into a folder on sys.path."""
    target = install_third_party_provider(tmp_path_factory.mktemp("acme") / "site")
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


@pytest.fixture
def adc(stack: AuthStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AuthStack:
    stack.reset()
    key_file = stack.google.write_key_file(tmp_path / "key.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return stack


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    yield from restore_provider_registry()


def kedro_mlflow_registers(provider_type: str, init_kwargs: dict[str, str]) -> None:
    """What kedro-mlflow's hook does with ``server.request_header_provider`` of mlflow.yml."""
    config = KedroMlflowConfig.model_validate(
        {"server": {"request_header_provider": {"type": provider_type, "init_kwargs": init_kwargs}}}
    )
    config._register_request_header_provider(None)


def instances_of(cls: type) -> int:
    providers = _request_header_provider_registry._registry
    return sum(type(provider) is cls for provider in list.__iter__(providers))


def test_unknown_type_lists_registered_names(third_party: Path) -> None:
    for unknown in ("gcp-oath", "my_package.auth.Missing", "kedro_vertex_hooks.auth.gcp.Nope"):
        with pytest.raises(AuthError) as failure:
            install_header_provider(RequestHeaderProviderConfig(type=unknown))
        message = str(failure.value)
        assert repr(unknown) in message
        assert "acme-id-token, gcp-iam, gcp-oauth" in message
    assert registered_provider_names() == ["acme-id-token", "gcp-iam", "gcp-oauth"]


def test_a_class_without_the_provider_methods_is_refused() -> None:
    with pytest.raises(AuthError, match="not a class with in_context"):
        install_header_provider(
            RequestHeaderProviderConfig(type="tests.support.header_providers.NotAProvider")
        )


def test_third_party_entry_point_provider_authenticates(adc: AuthStack, third_party: Path) -> None:
    installed = install_header_provider(
        RequestHeaderProviderConfig(
            type="acme-id-token",
            init_kwargs={"audience": AUDIENCE, "my_auth_info": "team-a"},
        )
    )
    client = MlflowClient(adc.proxy.url)

    client.create_experiment("third-party")

    assert installed is not None
    assert installed.class_path == "acme_mlflow_auth.MyCustomMLflowHeaderProvider"
    assert installed.headers["X-My-Custom-Header"] == "team…(6 chars)"
    assert resolve_request_headers()["X-My-Custom-Header"] == "team-a"
    assert adc.proxy.rejections == [] and adc.proxy.accepted == 1


@pytest.mark.parametrize(
    ("provider", "cause"),
    [
        ("FailsWhenCreated", "cannot be created: ValueError: cannot load credentials"),
        ("FailsToFetch", "could not produce its header: RuntimeError: token endpoint said 403"),
        ("ReturnsAString", "returned str from request_headers(), not a dict"),
        ("ReturnsNoHeader", "is in context but returned no header"),
    ],
)
def test_broken_provider_fails_fast_naming_provider_audience_and_cause(
    adc: AuthStack, caplog: pytest.LogCaptureFixture, provider: str, cause: str
) -> None:
    secret = adc.google.mint_id_token(AUDIENCE, "someone@example.com")
    provider_type = f"tests.support.header_providers.{provider}"
    config = RequestHeaderProviderConfig(
        type=provider_type, init_kwargs={"client_id": AUDIENCE, "secret": secret}
    )

    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as failure:
        install_header_provider(config)

    message = str(failure.value)
    assert message.startswith(f"Request header provider '{provider_type}'")
    assert f"audience '{AUDIENCE}'" in message and cause in message
    assert secret not in message and secret not in caplog.text
    assert secret not in "".join(traceback.format_exception(failure.value))
    assert "Authorization" not in resolve_request_headers()  # nothing was registered


def test_context_is_passed_only_when_asked() -> None:
    context = SimpleNamespace(params={"token": "context-token"})
    provider_type = "tests.support.header_providers.NeedsContext"

    without = install_header_provider(RequestHeaderProviderConfig(type=provider_type), context)
    with_context = install_header_provider(
        RequestHeaderProviderConfig(type=provider_type, pass_context=True), context
    )

    assert without is not None and not without.in_context and not without.header_obtained
    assert with_context is not None and with_context.provider.kedro_context is context
    assert resolve_request_headers()["Authorization"] == "Bearer context-token"


def test_installing_twice_keeps_one_registration_and_one_token(adc: AuthStack) -> None:
    first = install_header_provider(OAUTH)
    again = parse_section(RequestHeaderProviderConfig, as_plain(OAUTH), "test")
    second = install_header_provider(again)

    assert second is first
    assert instances_of(MLFlowGoogleOauthRequestHeaderProvider) == 1
    assert adc.google.issued == 1


@pytest.mark.parametrize(
    "kedro_mlflow_first", [True, False], ids=["kedro-mlflow-first", "ours-first"]
)
def test_kedro_mlflow_registering_the_same_provider_sends_one_authorization(
    adc: AuthStack, kedro_mlflow_first: bool
) -> None:
    if kedro_mlflow_first:
        kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})
    install_header_provider(OAUTH)
    if not kedro_mlflow_first:
        kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})
    client = MlflowClient(adc.proxy.url)

    client.create_experiment(f"duplicate-{kedro_mlflow_first}")

    assert resolve_request_headers()["Authorization"].count("Bearer") == 1
    assert adc.proxy.rejections == [] and adc.proxy.accepted == 1


def test_without_single_registration_the_proxy_sees_two_credentials(adc: AuthStack) -> None:
    kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})
    kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})

    with pytest.raises(Exception, match="401"):
        MlflowClient(adc.proxy.url).create_experiment("duplicate-unprotected")

    assert [rejection.reason for rejection in adc.proxy.rejections] == [
        "2 credentials in one request"
    ]


def test_ensure_single_registration_repairs_without_fetching(adc: AuthStack) -> None:
    installed = install_header_provider(OAUTH)
    kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})
    kedro_mlflow_registers(OAUTH_PATH, {"client_id": AUDIENCE})

    again = ensure_single_registration(OAUTH)
    without_config = ensure_single_registration()

    assert again is installed and without_config is installed
    assert instances_of(MLFlowGoogleOauthRequestHeaderProvider) == 1
    assert adc.google.issued == 1


def test_no_provider_configured_removes_ours(adc: AuthStack) -> None:
    install_header_provider(OAUTH)

    assert install_header_provider(RequestHeaderProviderConfig()) is None
    assert ensure_single_registration() is None
    assert "Authorization" not in resolve_request_headers()


def test_worker_process_installs_from_the_config_as_json(adc: AuthStack, tmp_path: Path) -> None:
    """A ParallelRunner spawn worker: fresh interpreter, no Kedro context, config as JSON."""
    code = """
import json, sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from kedro_vertex_hooks.auth import ensure_single_registration
from kedro_vertex_hooks.config import RequestHeaderProviderConfig, parse_section
config = parse_section(RequestHeaderProviderConfig, json.loads(sys.argv[1]), "argv")
first = ensure_single_registration(config)
assert ensure_single_registration(config) is first
MlflowClient(sys.argv[2]).search_experiments()
print(first.headers["Authorization"])
"""
    env = google_free_env(
        tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(adc.google.write_key_file(tmp_path / "k"))
    )

    worker = run_python(code, env, json.dumps(as_plain(OAUTH)), adc.proxy.url)

    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.startswith("Bearer eyJh…(")
    assert adc.proxy.rejections == [] and adc.proxy.accepted == 1
    assert adc.google.issued == 1


def test_mlflow_imported_after_a_rest_step_installed_the_provider_sends_it_once(
    adc: AuthStack, tmp_path: Path
) -> None:
    """Client-only image: the provider is installed while MLflow is not loaded (node steps
    talk REST); the user's own code then imports MLflow, whose registry gets the provider from
    the package's ``mlflow.request_header_provider`` entry point."""
    code = """
import json, sys
from kedro_vertex_hooks.auth import install_header_provider
from kedro_vertex_hooks.config import RequestHeaderProviderConfig, parse_section
from kedro_vertex_hooks.rest_client import RestTrackingClient
config = parse_section(RequestHeaderProviderConfig, json.loads(sys.argv[1]), "argv")
install_header_provider(config)
RestTrackingClient(sys.argv[2]).create_experiment("rest-first")
print("mlflow loaded before:", "mlflow" in sys.modules)
from mlflow import MlflowClient
MlflowClient(sys.argv[2]).create_experiment("mlflow-later")
"""
    env = google_free_env(
        tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(adc.google.write_key_file(tmp_path / "k"))
    )

    step = run_python(code, env, json.dumps(as_plain(OAUTH)), adc.proxy.url, python=SKINNY_PYTHON)

    assert step.returncode == 0, step.stderr
    assert "mlflow loaded before: False" in step.stdout
    assert adc.proxy.rejections == [] and adc.proxy.accepted == 2
    assert adc.google.issued == 1


def test_overriding_mlflow_credentials_are_named_in_a_warning(
    adc: AuthStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "static-token-value")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")

    with caplog.at_level(logging.WARNING):
        install_header_provider(RequestHeaderProviderConfig())  # their own choice: no warning
        assert caplog.records == []
        install_header_provider(OAUTH)

    warnings = [record.getMessage() for record in caplog.records]
    assert any("MLFLOW_TRACKING_TOKEN is set" in warning for warning in warnings)
    assert any("MLFLOW_TRACKING_USERNAME is set" in warning for warning in warnings)
    assert "static-token-value" not in caplog.text


def test_importing_the_auth_package_imports_neither_mlflow_nor_google(tmp_path: Path) -> None:
    code = """
import json, sys
import kedro_vertex_hooks.auth
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "google"})))
"""
    result = run_python(code, google_free_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_refused_call_is_explained_in_words(adc: AuthStack) -> None:
    client = MlflowClient(adc.proxy.url)
    with pytest.raises(MlflowException) as without_provider:
        client.search_experiments()
    wrong = "5678-other.apps.googleusercontent.com"
    install_header_provider(
        RequestHeaderProviderConfig(type="gcp-oauth", init_kwargs={"client_id": wrong})
    )
    with pytest.raises(MlflowException) as wrong_audience:
        client.search_experiments()

    assert explain_refusal(without_provider.value, None) == (
        "The tracking server answered HTTP 401 with a sign-in page: it needs authentication, "
        "but mlflow.yml configures no server.request_header_provider (e.g. type: gcp-oauth "
        "with init_kwargs.client_id)."
    )
    explained = explain_refusal(wrong_audience.value, installed_provider())
    assert explained is not None
    assert f"provider 'gcp-oauth' sent Authorization for audience '{wrong}'" in explained
    assert [rejection.reason for rejection in adc.proxy.rejections] == [
        "no credentials",
        f"audience '{wrong}' is not '{AUDIENCE}'",
    ]
    assert explain_refusal(MlflowException("RESOURCE_DOES_NOT_EXIST: no run"), None) is None
