"""Providers that misbehave in the ways real ones do, referenced by dotted path in tests.

Each gets the token it could leak as ``init_kwargs.secret`` so tests can check that the
token never shows up in errors, logs or ``repr()``.
"""

from __future__ import annotations

from kedro_vertex_hooks.auth import RequestHeaderProviderWithKedroContext


class FailsWhenCreated(RequestHeaderProviderWithKedroContext):
    def __init__(self, kedro_context=None, **params):
        super().__init__(kedro_context, **params)
        raise ValueError(f"cannot load credentials (cached: Bearer {params['secret']})")

    def in_context(self):
        return True

    def request_headers(self):
        return {}


class FailsToFetch(RequestHeaderProviderWithKedroContext):
    def in_context(self):
        return True

    def request_headers(self):
        raise RuntimeError(f"token endpoint said 403 to {self.params['secret']}")


class ReturnsAString(RequestHeaderProviderWithKedroContext):
    def in_context(self):
        return True

    def request_headers(self):
        return f"Bearer {self.params['secret']}"


class ReturnsNoHeader(RequestHeaderProviderWithKedroContext):
    def in_context(self):
        return True

    def request_headers(self):
        return {}


class NeedsContext(RequestHeaderProviderWithKedroContext):
    """Reads its token from the Kedro context, as ``pass_context: true`` providers do."""

    def in_context(self):
        return self.kedro_context is not None

    def request_headers(self):
        return {"Authorization": f"Bearer {self.kedro_context.params['token']}"}


class NotAProvider:
    """No in_context()/request_headers(): must be refused by name."""
