"""WHEN the Google providers fetch a new ID token, counted on the fake Google server's side.

The other auth tests only show that requests keep being accepted, which a fixed cache TTL
shorter than the token's life (or a refetch on every request) would also do. These pin the
rule of ``kedro_vertex_hooks.auth.tokens``: a token with lifetime L = exp - iat is refreshed
min(300 s, 0.25 * L) before its ``exp``, and a token without a known expiry on every request.

The providers are installed as the package installs them, google-auth and MLflow run their
real code against the fake endpoints and the IAP-like proxy on 127.0.0.1, and every
expectation is computed from the ``iat``/``exp`` of the token the fake server really issued.
Waits go to absolute times on the clock those claims are on, never to lucky sleep lengths.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.tracking.request_header.registry import resolve_request_headers

from kedro_vertex_hooks.auth import AuthError, InstalledProvider, install_header_provider
from kedro_vertex_hooks.auth.tokens import Token
from kedro_vertex_hooks.config import RequestHeaderProviderConfig
from tests.support.auth_stack import AUDIENCE, AuthStack
from tests.support.fake_google import verify_jwt

TARGET_ACCOUNT = "mlflow-writer@fake-project.iam.gserviceaccount.com"
# The fake endpoint each provider gets its ID tokens from (ADC is a key file here).
ENDPOINT = {"gcp-oauth": "token", "gcp-iam": "iam"}
PROVIDERS = sorted(ENDPOINT)
BURST = 10  # requests per "no fetch expected" check: enough for a per-call fetch to show
DEFAULT_EXPERIMENT_ID = "0"  # exists on every MLflow server


def _install(stack: AuthStack, provider_type: str) -> InstalledProvider:
    """Install the provider as the hooks do; installing fetches the first token."""
    init_kwargs = {"client_id": AUDIENCE}
    if provider_type == "gcp-iam":
        init_kwargs |= {
            "service_account": TARGET_ACCOUNT,
            "iam_endpoint": stack.google.iam_endpoint,
        }
    installed = install_header_provider(
        RequestHeaderProviderConfig(type=provider_type, init_kwargs=init_kwargs)
    )
    assert installed is not None
    return installed


def _claims(stack: AuthStack, token: str) -> dict[str, Any]:
    return verify_jwt(stack.google.public_key, token)


def _refresh_point(claims: dict) -> float:
    """The rule under test, written out here so that the test does not follow tokens.py."""
    lifetime = claims["exp"] - claims["iat"]
    return claims["exp"] - min(300.0, 0.25 * lifetime)


def _wait_until(moment: float) -> None:
    """Sleep until ``time.time()``, the clock tokens.py compares ``exp`` with, reaches it."""
    while (left := moment - time.time()) > 0:
        time.sleep(left)


def _requests(client: MlflowClient, count: int, stop_by: float = math.inf) -> list[float]:
    """Up to ``count`` MLflow requests through the proxy, none started at or after ``stop_by``;
    returns when each one ended (its header was resolved before that). Reads of the Default
    experiment: the cheapest request that still goes through the header provider."""
    ended = []
    for _ in range(count):
        if time.time() >= stop_by:
            break
        client.get_experiment(DEFAULT_EXPERIMENT_ID)
        ended.append(time.time())
    return ended


@pytest.mark.parametrize("provider_type", PROVIDERS)
def test_short_lived_token_is_refreshed_once_a_quarter_of_its_life_before_expiry(
    adc: AuthStack, registry: None, provider_type: str
) -> None:
    """Lifetime 20 s: the refresh point is 15 s after ``iat``, 5 s before ``exp``.

    The fake's clock runs 9 s behind ours, so the token arrives 9 s old and its refresh point
    is about 6 s away: a 5 s window to land one request in, reached without a 15 s wait. (An
    8 s token's 2 s window was missed here at a load average of 65 on 2 cores: the request made
    0.1 s into it reached the fake server 2.1 s later.)

    Requests right after the fetch (as many as fit until 2 s before the refresh point: on a
    loaded machine installing the provider can take seconds) and from 1.5 s before the refresh
    point, none started later than 0.5 s before it, then one 0.1 s after it. What is asserted
    is when each fetch reached the fake server, so a slow machine only makes fewer requests
    (one late one is needed); the other timing assumption is that the request made after the
    refresh point reaches the fake server within 4.9 s. A fixed TTL, a margin other than 5 s
    (google-auth's 225 s is a fetch per request), a lifetime counted from the local fetch time
    instead of ``iat``, or refreshing only at expiry each fail here.
    """
    adc.google.token_lifetime_s = 20
    adc.google.clock_offset_s = -9
    endpoint = ENDPOINT[provider_type]
    installed = _install(adc, provider_type)
    client = MlflowClient(adc.proxy.url)
    [first] = adc.google.issued_tokens
    claims = _claims(adc, first.value)
    iat, exp = claims["iat"], claims["exp"]
    refresh_at = _refresh_point(claims)
    assert (exp - iat, refresh_at - iat) == (20, 15)
    assert installed.provider.token_expiry == datetime.fromtimestamp(exp, tz=timezone.utc)

    # (a) Many requests before the refresh point: no fetch beyond the first.
    ended = _requests(client, BURST, refresh_at - 2.0)
    _wait_until(refresh_at - 1.5)
    late = _requests(client, BURST, refresh_at - 0.5)
    assert late, "no request started 1.5-0.5 s before the refresh point: stalled"
    ended += late
    early = [fetch for fetch in adc.google.issued_tokens[1:] if fetch.at < refresh_at]
    assert early == [], f"fetched {[round(f.at - iat, 2) for f in early]} s after iat"
    assert any(moment < refresh_at for moment in ended)  # one surely sent before it
    assert first.value in adc.proxy.tokens_seen and adc.proxy.rejections == []

    # (b) The first request after the refresh point, before expiry: exactly one fetch.
    _wait_until(refresh_at + 0.1)
    adc.proxy.reset()
    _requests(client, 1)
    assert adc.google.counts == {endpoint: 2}
    second = adc.google.issued_tokens[1]
    assert refresh_at <= second.at < exp, f"fetched {second.at - iat:.2f} s after iat"

    # (c) The new token is the one sent from then on, and it is not fetched again.
    second_claims = _claims(adc, second.value)
    ended = _requests(client, BURST, _refresh_point(second_claims) - 1.0)
    assert ended, "no request started before the new token's own refresh point: stalled"
    assert adc.google.counts == {endpoint: 2}
    assert adc.proxy.tokens_seen == {second.value} and adc.proxy.rejections == []
    assert adc.proxy.accepted == len(ended) + 1
    expiry = datetime.fromtimestamp(second_claims["exp"], tz=timezone.utc)
    assert installed.provider.token_expiry == expiry


@pytest.mark.parametrize("provider_type", PROVIDERS)
@pytest.mark.parametrize(
    ("seconds_left", "due"),
    [(3600, False), (310, False), (290, True)],
    ids=["fresh", "310s-left", "290s-left"],
)
def test_hour_long_token_is_refreshed_300_s_before_expiry_not_a_quarter_hour(
    adc: AuthStack, registry: None, provider_type: str, seconds_left: int, due: bool
) -> None:
    """Google's ID tokens live 3600 s: 0.25 * L would be 900 s, the cap makes it 300 s.

    No waiting: the fake's clock is set back so that the token it issues has ``seconds_left``
    until ``exp`` (as a local clock ahead of Google's would see it). With 310 s left the token
    is kept (so the margin is not 900 s); with 290 s left it is already due, and as every
    fresh token is too, each request fetches one ("due immediately").
    """
    adc.google.token_lifetime_s = 3600
    adc.google.clock_offset_s = seconds_left - 3600
    endpoint = ENDPOINT[provider_type]
    installed = _install(adc, provider_type)
    client = MlflowClient(adc.proxy.url)
    claims = _claims(adc, adc.google.issued_tokens[0].value)
    assert claims["exp"] - claims["iat"] == 3600
    assert (_refresh_point(claims) <= time.time()) is due

    ended = _requests(client, BURST, math.inf if due else _refresh_point(claims) - 1.0)

    assert ended, "no request started before the refresh point: stalled"
    assert adc.google.counts == {endpoint: 1 + len(ended) if due else 1}
    assert len(adc.proxy.tokens_seen) == (len(ended) if due else 1)
    assert adc.proxy.rejections == []
    expiry = installed.provider.token_expiry
    latest = _claims(adc, adc.google.issued_tokens[-1].value)
    assert expiry == datetime.fromtimestamp(latest["exp"], tz=timezone.utc)


def test_iam_token_without_exp_is_fetched_for_every_request(adc: AuthStack, registry: None) -> None:
    """tokens.py: a token whose expiry is unknown is never reused.

    The IAM provider reads the expiry from the token alone (``generateIdToken`` answers with
    the token only). MLflow's own per-request header resolution is asked here, not the proxy:
    IAP refuses a token without ``exp`` anyway.
    """
    adc.google.omit_claims = {"exp"}
    installed = _install(adc, "gcp-iam")

    headers = [resolve_request_headers()["Authorization"] for _ in range(5)]

    assert installed.provider.token_expiry is None and installed.token_expiry is None
    assert adc.google.counts == {"iam": 6}
    assert len(set(headers)) == 5
    assert headers[-1] == f"Bearer {adc.google.issued_tokens[-1].value}"


def test_oauth_token_without_exp_is_refused_by_google_auth_and_not_cached(
    adc: AuthStack, registry: None
) -> None:
    """The OAuth provider passes google-auth's ``credentials.expiry`` as the fallback expiry
    for a token without ``exp``, but google-auth 2.x derives that expiry from the ``exp`` claim
    itself (``payload["exp"]``) and fails without it, so the fallback is not reached through
    google-auth's ID-token credentials: the fetch fails, nothing is cached, the next request
    tries again."""
    adc.google.omit_claims = {"exp"}

    for attempt in (1, 2):
        with pytest.raises(AuthError, match="KeyError: 'exp'"):
            _install(adc, "gcp-oauth")
        assert adc.google.counts == {"token": attempt}


def test_fallback_expiry_sets_the_schedule_when_the_token_has_no_exp(adc: AuthStack) -> None:
    """What tokens.py does with the fallback when it is used: ``iat`` from the token, the expiry
    from the credentials (naive UTC, as google-auth keeps it), so L and the margin follow."""
    adc.google.omit_claims = {"exp"}
    value = adc.google.mint_id_token(AUDIENCE, TARGET_ACCOUNT)
    iat = _claims(adc, value)["iat"]
    naive_utc = datetime.fromtimestamp(iat + 8, tz=timezone.utc).replace(tzinfo=None)

    token = Token.from_jwt(value, fallback_expiry=naive_utc)

    assert (token.issued_at, token.expires_at) == (iat, iat + 8)
    assert token.expiry == naive_utc.replace(tzinfo=timezone.utc)
    assert _refresh_point({"iat": token.issued_at, "exp": token.expires_at}) == iat + 6
    assert Token.from_jwt(value).expires_at is None  # no fallback: refetched every time
