"""A cached token that is refreshed ahead of its own expiry, one fetch at a time.

Modelled on google-auth's ``Credentials`` (``valid``, ``expiry``, ``refresh()``), but the
refresh margin scales with the token's lifetime: google-auth's fixed 3 min 45 s margin would
refetch a short-lived token on every request. A failed fetch is never cached, and while the
current token has not expired yet it keeps being served (with a warning) so that a brief
outage of the token endpoint does not fail MLflow requests.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kedro_vertex_hooks.auth.errors import describe_cause

logger = logging.getLogger(__name__)

MAX_REFRESH_AHEAD_S = 300.0
REFRESH_AHEAD_FRACTION = 0.25


@dataclass(frozen=True)
class Token:
    """A bearer credential and the times that bound its life (epoch seconds, if known)."""

    value: str = field(repr=False)
    expires_at: float | None = None
    issued_at: float | None = None

    @classmethod
    def from_jwt(cls, value: str, fallback_expiry: datetime | None = None) -> Token:
        """Read ``exp``/``iat`` from the token itself; fall back to the credentials' expiry."""
        claims = unverified_claims(value)
        expires_at = claims.get("exp")
        if not isinstance(expires_at, (int, float)) and fallback_expiry is not None:
            expiry = fallback_expiry
            if expiry.tzinfo is None:  # google-auth keeps naive UTC datetimes
                expiry = expiry.replace(tzinfo=timezone.utc)
            expires_at = expiry.timestamp()
        issued_at = claims.get("iat")
        if not isinstance(issued_at, (int, float)):
            issued_at = time.time()  # close enough: the token was just fetched
        return cls(
            value=value,
            expires_at=float(expires_at) if isinstance(expires_at, (int, float)) else None,
            issued_at=float(issued_at),
        )

    @property
    def expiry(self) -> datetime | None:
        if self.expires_at is None:
            return None
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc)


def unverified_claims(value: str) -> dict:
    """The payload of a JWT without checking its signature (only to learn its expiry)."""
    parts = value.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


_caches: weakref.WeakSet[TokenCache] = weakref.WeakSet()


class TokenCache:
    """One token per provider with google-auth's ``valid`` and ``expiry``; ``get()``
    refreshes only when due, one thread at a time."""

    def __init__(
        self,
        fetch: Callable[[], Token],
        description: str,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._after_fork = after_fork
        self._description = description
        self._lock = threading.Lock()
        self._token: Token | None = None
        _caches.add(self)

    @property
    def valid(self) -> bool:
        """True while the held token is not yet due for refresh."""
        token = self._token
        return token is not None and not _due(token, time.time())

    @property
    def expiry(self) -> datetime | None:
        """Expiry of the held token, if any; never triggers a fetch."""
        token = self._token
        return token.expiry if token is not None else None

    def get(self) -> Token:
        if not self.valid:
            with self._lock:
                if not self.valid:  # another thread may have refreshed while we waited
                    return self._refresh_locked()
        return self._token  # type: ignore[return-value]

    def _refresh_locked(self) -> Token:
        current = self._token
        try:
            fresh = self._fetch()
        except Exception as exc:
            now = time.time()
            if current is None or current.expires_at is None or now >= current.expires_at:
                raise
            logger.warning(
                "Refreshing the token for %s failed (%s); the current token is valid "
                "for %.0f s more and is used meanwhile.",
                self._description,
                describe_cause(exc, (current.value,)),
                current.expires_at - now,
            )
            return current
        self._token = fresh
        return fresh

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._after_fork is not None:
            self._after_fork()


def _due(token: Token, now: float) -> bool:
    """Whether a token should be replaced: a token without known expiry always is."""
    if token.expires_at is None:
        return True
    if token.issued_at is None:
        ahead = MAX_REFRESH_AHEAD_S
    else:
        lifetime = max(token.expires_at - token.issued_at, 0.0)
        ahead = min(MAX_REFRESH_AHEAD_S, lifetime * REFRESH_AHEAD_FRACTION)
    return now >= token.expires_at - ahead


def _reset_in_child() -> None:
    # A lock held by another thread at fork time would never be released in the child, and
    # pooled connections inherited from the parent must not be shared with it.
    for cache in list(_caches):
        cache._reset_after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
