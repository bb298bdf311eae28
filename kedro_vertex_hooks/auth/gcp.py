"""Google ID tokens for MLflow servers behind Identity-Aware Proxy (needs the ``[gcp]`` extra).

The class names match kedro-vertexai's, so an existing ``mlflow.yml`` only changes the module
prefix. Tokens are cached until shortly before the expiry they carry (see ``tokens``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kedro_vertex_hooks.auth.base import RequestHeaderProviderWithKedroContext
from kedro_vertex_hooks.auth.errors import AuthError, describe_cause, scrub
from kedro_vertex_hooks.auth.tokens import Token, TokenCache

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
HEADERS_ACCEPTED_BY_IAP = ("Authorization", "Proxy-Authorization")


def _google_transport() -> Any:
    try:
        import google.auth.transport.requests as transport
    except ImportError as exc:
        raise AuthError(
            "The Google providers need google-auth and requests: "
            "pip install 'kedro-vertex-hooks[gcp]'"
        ) from exc
    return transport


class _GoogleIdTokenProvider(RequestHeaderProviderWithKedroContext):
    """Sends ``<header>: Bearer <ID token for client_id>``, refreshed ahead of expiry.

    ``header`` may be ``Proxy-Authorization`` (IAP accepts both) when the MLflow server behind
    IAP needs ``Authorization`` for itself.
    """

    def __init__(
        self,
        kedro_context: Any = None,
        client_id: str | None = None,
        header: str = "Authorization",
        **params: Any,
    ) -> None:
        super().__init__(kedro_context, client_id=client_id, header=header, **params)
        if not client_id:
            raise AuthError(
                f"{type(self).__name__} needs init_kwargs.client_id: the OAuth client id of "
                f"the IAP-protected MLflow server (the token's audience)."
            )
        if header not in HEADERS_ACCEPTED_BY_IAP:
            raise AuthError(f"header must be one of {HEADERS_ACCEPTED_BY_IAP}, not {header!r}")
        self.audience = str(client_id)
        self.header = header
        self._cache = TokenCache(
            self._fetch_safely, f"{type(self).__name__}({self.audience})", self._drop_connections
        )

    def in_context(self) -> bool:
        return True

    def request_headers(self) -> dict[str, str]:
        return {self.header: f"Bearer {self._cache.get().value}"}

    @property
    def token_expiry(self) -> datetime | None:
        """Expiry of the token held now (``doctor`` shows it)."""
        return self._cache.expiry

    def __repr__(self) -> str:
        return f"{type(self).__name__}(audience={self.audience!r}, header={self.header!r})"

    def _fetch_safely(self) -> Token:
        try:
            return self._fetch()
        except AuthError:
            raise
        except Exception as exc:
            # MLflow logs a provider's exception text; google-auth's may quote responses.
            raise AuthError(
                f"no Google ID token for audience {self.audience!r}: {describe_cause(exc)}"
            ) from None

    def _fetch(self) -> Token:
        raise NotImplementedError

    def _drop_connections(self) -> None:
        """Called in a forked child: the parent's HTTP connection pool is not ours to use."""


class MLFlowGoogleOauthRequestHeaderProvider(_GoogleIdTokenProvider):
    """ID token from Application Default Credentials.

    Works with the metadata server (Vertex AI, GKE, Cloud Run, GCE), a service-account key
    file or an impersonated-credentials file in ``GOOGLE_APPLICATION_CREDENTIALS``; gcloud user
    credentials cannot mint ID tokens for another audience.
    """

    def __init__(self, kedro_context: Any = None, client_id: str | None = None, **params: Any):
        super().__init__(kedro_context, client_id=client_id, **params)
        self._credentials: Any = None
        self._request: Any = None

    def _fetch(self) -> Token:
        transport = _google_transport()
        from google.oauth2 import id_token

        if self._request is None:
            self._request = transport.Request()
        if self._credentials is None:
            self._credentials = id_token.fetch_id_token_credentials(
                self.audience, request=self._request
            )
        self._credentials.refresh(self._request)
        return Token.from_jwt(self._credentials.token, self._credentials.expiry)

    def _drop_connections(self) -> None:
        self._request = None


class MLFlowGoogleIAMRequestHeaderProvider(_GoogleIdTokenProvider):
    """ID token for ``service_account``, minted by IAM Credentials ``generateIdToken``.

    The caller's Application Default Credentials need Service Account Token Creator on that
    account. ``includeEmail`` is always true (IAP requires the email claim). ``iam_endpoint``
    overrides the URL template (``{service_account}`` is substituted), e.g. for Private
    Service Connect.
    """

    def __init__(
        self,
        kedro_context: Any = None,
        client_id: str | None = None,
        service_account: str | None = None,
        delegates: list[str] | None = None,
        iam_endpoint: str | None = None,
        timeout_s: float = 30.0,
        **params: Any,
    ):
        super().__init__(
            kedro_context,
            client_id=client_id,
            service_account=service_account,
            delegates=delegates,
            iam_endpoint=iam_endpoint,
            timeout_s=timeout_s,
            **params,
        )
        if not service_account:
            raise AuthError(
                f"{type(self).__name__} needs init_kwargs.service_account: the email of the "
                f"service account the ID token is minted for."
            )
        self.service_account = str(service_account)
        self.delegates = [str(delegate) for delegate in delegates or ()]
        self.iam_endpoint = iam_endpoint
        self.timeout_s = float(timeout_s)
        self._source_credentials: Any = None
        self._session: Any = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(audience={self.audience!r}, "
            f"service_account={self.service_account!r}, header={self.header!r})"
        )

    def _fetch(self) -> Token:
        transport = _google_transport()
        if self._source_credentials is None:
            import google.auth

            self._source_credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        if self._session is None:
            self._session = transport.AuthorizedSession(self._source_credentials)
        response = self._session.post(
            self._endpoint_url(),
            json={
                "audience": self.audience,
                "includeEmail": True,
                "delegates": [f"projects/-/serviceAccounts/{d}" for d in self.delegates],
            },
            timeout=self.timeout_s,
        )
        if response.status_code != 200:
            raise AuthError(
                f"IAM generateIdToken for {self.service_account} (audience {self.audience!r}) "
                f"answered HTTP {response.status_code}: {scrub(response.text[:300])}"
            )
        try:
            value = response.json()["token"]
        except (KeyError, ValueError, TypeError):
            raise AuthError(
                f"IAM generateIdToken for {self.service_account} answered without a token."
            ) from None
        return Token.from_jwt(value)

    def _drop_connections(self) -> None:
        self._session = None

    def _endpoint_url(self) -> str:
        if self.iam_endpoint:
            return self.iam_endpoint.format(service_account=self.service_account)
        from google.auth import credentials, iam

        universe = getattr(self._source_credentials, "universe_domain", None)
        template = iam._IAM_IDTOKEN_ENDPOINT
        if universe:
            template = template.replace(credentials.DEFAULT_UNIVERSE_DOMAIN, universe)
        return template.format(self.service_account)
