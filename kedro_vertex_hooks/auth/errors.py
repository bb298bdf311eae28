"""The auth error and the redaction every message about a header goes through.

Tokens must never reach logs, exceptions or ``repr()``; a header value is only ever shown as
its scheme, a four-character prefix and its length.
"""

from __future__ import annotations

import re

from kedro_vertex_hooks.errors import UserError

_JWT = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
_SCHEME_AND_CREDENTIAL = re.compile(r"\b(Bearer|bearer|Basic)\s+[^\s,;'\"<]+")


class AuthError(UserError):
    """A request header provider cannot be resolved, built or asked for its header."""


def redact_header_value(value: object) -> str:
    """``Bearer eyJh…(1234 chars)``: enough to recognise a header, never enough to use it."""
    text = str(value)
    scheme, _, credential = text.partition(" ")
    if not credential:
        scheme, credential = "", text
    shown = f"{credential[:4]}…({len(credential)} chars)"
    return f"{scheme} {shown}" if scheme else shown


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove tokens (JWTs, ``Bearer x`` credentials, known secret values) from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _JWT.sub("<redacted token>", text)
    return _SCHEME_AND_CREDENTIAL.sub(lambda match: f"{match.group(1)} <redacted>", text)


def describe_cause(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """``ExceptionType: message`` with every token removed, for error messages and logs."""
    message = scrub(str(exc), secrets).strip()
    if isinstance(exc, AuthError) and message:
        return message  # already says what failed, in this package's words
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
