"""Built-in Google providers against the fake Google endpoints and the IAP-like proxy.

google-auth runs its real code here: Application Default Credentials come from a
service-account key file whose token endpoint is the fake server, and the IAM provider is
pointed at the fake generateIdToken endpoint through its ``iam_endpoint`` option.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.tracking.request_header.registry import resolve_request_headers

from kedro_vertex_hooks.auth import AuthError, install_header_provider
from kedro_vertex_hooks.auth.gcp import (
    MLFlowGoogleIAMRequestHeaderProvider,
    MLFlowGoogleOauthRequestHeaderProvider,
)
from kedro_vertex_hooks.config import RequestHeaderProviderConfig
from tests.support.auth_stack import AUDIENCE, AuthStack
from tests.support.fake_google import verify_jwt

OTHER_ACCOUNT = "mlflow-writer@fake-project.iam.gserviceaccount.com"


def _bearer(headers: dict[str, str]) -> str:
    scheme, token = headers["Authorization"].split(" ")
    assert scheme == "Bearer"
    return token


def _log_for(client: MlflowClient, run_id: str, seconds: float) -> int:
    """Log a metric through the proxy for ``seconds``; returns how many requests were made."""
    deadline, step = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        client.log_metric(run_id, "heartbeat", step, step=step)
        step += 1
    return step


@pytest.mark.parametrize("provider_type", ["gcp-oauth", "gcp-iam"])
def test_tokens_expiring_during_a_run_are_refreshed_with_no_request_rejected(
    adc: AuthStack, registry: None, provider_type: str
) -> None:
    adc.google.token_lifetime_s = 3
    init_kwargs = {"client_id": AUDIENCE}
    if provider_type == "gcp-iam":
        init_kwargs |= {"service_account": OTHER_ACCOUNT, "iam_endpoint": adc.google.iam_endpoint}
    installed = install_header_provider(
        RequestHeaderProviderConfig(type=provider_type, init_kwargs=init_kwargs)
    )
    client = MlflowClient(adc.proxy.url)
    run = client.create_run(client.create_experiment(f"refresh-{provider_type}"))

    requests_made = _log_for(client, run.info.run_id, seconds=7)

    assert installed is not None and installed.header_obtained
    assert adc.proxy.rejections == []
    assert adc.proxy.accepted == requests_made + 2
    assert len(adc.proxy.tokens_seen) >= 3  # the run outlived at least two tokens
    assert adc.google.issued == len(adc.proxy.tokens_seen)  # one fetch per token, not per call
    assert len(client.get_metric_history(run.info.run_id, "heartbeat")) == requests_made


def test_artifacts_upload_and_download_through_the_proxy(
    adc: AuthStack, registry: None, tmp_path: Path
) -> None:
    install_header_provider(
        RequestHeaderProviderConfig(type="gcp-oauth", init_kwargs={"client_id": AUDIENCE})
    )
    client = MlflowClient(adc.proxy.url)
    run_id = client.create_run(client.create_experiment("artifacts")).info.run_id
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(3 * 1024 * 1024))

    client.log_artifact(run_id, str(model), "models")
    downloaded = client.download_artifacts(run_id, "models/model.bin", str(tmp_path / "back"))

    assert Path(downloaded).read_bytes() == model.read_bytes()
    assert adc.proxy.rejections == []


def test_iam_token_is_for_the_service_account_with_email(adc: AuthStack) -> None:
    provider = MLFlowGoogleIAMRequestHeaderProvider(
        client_id=AUDIENCE, service_account=OTHER_ACCOUNT, iam_endpoint=adc.google.iam_endpoint
    )

    claims = verify_jwt(adc.google.public_key, _bearer(provider.request_headers()))

    assert (claims["aud"], claims["email"]) == (AUDIENCE, OTHER_ACCOUNT)
    assert provider.token_expiry is not None
    assert provider.token_expiry.timestamp() == claims["exp"]
    assert adc.google.counts == {"iam": 1}


def test_concurrent_requests_fetch_one_token(adc: AuthStack) -> None:
    adc.google.token_lifetime_s = 4
    adc.google.delay_s = 0.3  # a slow token endpoint: every thread arrives while it works
    provider = MLFlowGoogleOauthRequestHeaderProvider(client_id=AUDIENCE)
    start = threading.Barrier(16)
    tokens: list[str] = []

    def ask() -> None:
        start.wait()
        tokens.append(_bearer(provider.request_headers()))

    def ask_from_threads() -> None:
        threads = [threading.Thread(target=ask) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    ask_from_threads()
    first_round = set(tokens)
    expires_at = verify_jwt(adc.google.public_key, tokens[0])["exp"]
    time.sleep(max(0.0, expires_at - time.time() - 0.5))  # inside the refresh margin
    tokens.clear()
    ask_from_threads()

    assert len(first_round) == 1
    assert len(set(tokens)) == 1 and set(tokens) != first_round
    assert adc.google.counts == {"token": 2}


def test_forked_worker_gets_a_token_while_the_parent_is_refreshing(adc: AuthStack) -> None:
    """ParallelRunner with fork: the parent's lock and connections must not reach the child."""
    adc.google.delay_s = 1.5
    provider = MLFlowGoogleOauthRequestHeaderProvider(client_id=AUDIENCE)
    parent = threading.Thread(target=provider.request_headers)
    parent.start()
    time.sleep(0.5)  # the parent's fetch holds the lock now
    fork = multiprocessing.get_context("fork")
    tokens = fork.Queue()
    child = fork.Process(target=lambda: tokens.put(_bearer(provider.request_headers())))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()  # deadlocked on the parent's lock
    parent.join()

    assert child.exitcode == 0
    token = tokens.get(timeout=5)
    assert verify_jwt(adc.google.public_key, token)["aud"] == AUDIENCE
    assert adc.google.counts == {"token": 2}


def test_failed_fetch_is_not_cached(adc: AuthStack, caplog: pytest.LogCaptureFixture) -> None:
    provider = MLFlowGoogleOauthRequestHeaderProvider(client_id=AUDIENCE)
    adc.google.fail_next(1)

    with pytest.raises(AuthError) as failure:
        provider.request_headers()
    token = _bearer(provider.request_headers())

    assert AUDIENCE in str(failure.value) and "403" in str(failure.value)
    assert adc.google.failures == {"token": 1}
    assert adc.google.counts == {"token": 1}
    assert adc.proxy.check([f"Bearer {token}"]) == (token, None)


def test_failed_refresh_keeps_serving_the_unexpired_token(
    adc: AuthStack, caplog: pytest.LogCaptureFixture
) -> None:
    adc.google.token_lifetime_s = 4
    provider = MLFlowGoogleOauthRequestHeaderProvider(client_id=AUDIENCE)
    first = _bearer(provider.request_headers())
    expires_at = verify_jwt(adc.google.public_key, first)["exp"]
    time.sleep(max(0.0, expires_at - time.time() - 0.7))  # due for refresh, not expired
    adc.google.fail_next(1)

    with caplog.at_level(logging.WARNING):
        during_outage = _bearer(provider.request_headers())
    after_outage = _bearer(provider.request_headers())

    assert during_outage == first
    assert after_outage != first
    assert adc.google.failures == {"token": 1} and adc.google.counts == {"token": 2}
    assert "valid for" in caplog.text and first not in caplog.text


def test_fetch_failure_during_requests_does_not_poison_later_requests(
    adc: AuthStack, registry: None
) -> None:
    adc.google.token_lifetime_s = 2
    install_header_provider(
        RequestHeaderProviderConfig(type="gcp-oauth", init_kwargs={"client_id": AUDIENCE})
    )
    client = MlflowClient(adc.proxy.url)
    experiment = client.create_experiment("failed-token-fetch")
    time.sleep(2.1)  # the token has expired: the next request must fetch
    adc.google.fail_next(1)

    with pytest.raises(Exception, match="401"):
        client.get_experiment(experiment)  # MLflow skipped the failing provider
    recovered = client.get_experiment(experiment)

    assert recovered.name == "failed-token-fetch"
    assert [rejection.reason for rejection in adc.proxy.rejections] == ["no credentials"]


def test_header_goes_to_proxy_authorization_when_asked(adc: AuthStack, registry: None) -> None:
    install_header_provider(
        RequestHeaderProviderConfig(
            type="gcp-oauth", init_kwargs={"client_id": AUDIENCE, "header": "Proxy-Authorization"}
        )
    )
    client = MlflowClient(adc.proxy.url)

    client.create_experiment("proxy-authorization")

    assert "Authorization" not in resolve_request_headers()
    assert adc.proxy.rejections == [] and adc.proxy.accepted == 1


def test_provider_without_client_id_is_refused_when_created() -> None:
    with pytest.raises(AuthError, match="client_id"):
        MLFlowGoogleOauthRequestHeaderProvider()
    with pytest.raises(AuthError, match="service_account"):
        MLFlowGoogleIAMRequestHeaderProvider(client_id=AUDIENCE)


def test_token_never_in_repr_or_logs(
    adc: AuthStack, registry: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        installed = install_header_provider(
            RequestHeaderProviderConfig(type="gcp-oauth", init_kwargs={"client_id": AUDIENCE})
        )
        MlflowClient(adc.proxy.url).create_experiment("redaction")
    assert installed is not None
    token = _bearer(installed.provider.request_headers())

    shown = [repr(installed), repr(installed.provider), *installed.describe(), caplog.text]

    assert all(token not in text and token[:40] not in text for text in shown)
    assert installed.headers == {"Authorization": f"Bearer {token[:4]}…({len(token)} chars)"}
    assert installed.token_expiry is not None
    assert f"token expires: {installed.token_expiry.isoformat(timespec='seconds')}" in shown
    assert f"Bearer {token[:4]}…({len(token)} chars)" in caplog.text
