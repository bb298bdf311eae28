"""Say in words why an authenticated tracking call was refused (for ``doctor`` and errors).

Behind Identity-Aware Proxy a refused request comes back as HTTP 401/403 with an HTML sign-in
page, which MLflow quotes inside a long exception; users need the likely cause instead.
"""

from __future__ import annotations

import os
import re

from kedro_vertex_hooks.auth.install import OVERRIDING_ENV_VARS, InstalledProvider

_REFUSED = re.compile(r"\b(?:error code|status code|HTTP) (401|403)\b")


def explain_refusal(error: BaseException, installed: InstalledProvider | None) -> str | None:
    """A sentence for a call refused by an auth gate, or None when ``error`` is not that."""
    text = str(error)
    match = _REFUSED.search(text)
    if match is None:
        return None
    page = " with a sign-in page" if "<html" in text.lower() else ""
    refused = f"The tracking server answered HTTP {match.group(1)}{page}"
    overriding = [name for name in OVERRIDING_ENV_VARS if os.environ.get(name)]
    if overriding:
        return (
            f"{refused}. {' and '.join(overriding)} is set and overrides the Authorization "
            f"header of any request header provider: unset it."
        )
    if installed is None:
        return (
            f"{refused}: it needs authentication, but mlflow.yml configures no "
            f"server.request_header_provider (e.g. type: gcp-oauth with init_kwargs.client_id)."
        )
    if not installed.header_obtained:
        return (
            f"{refused}: request header provider {installed.name!r} is configured but sent no "
            f"header (its in_context() is false here)."
        )
    audience = f" for audience {installed.audience!r}" if installed.audience else ""
    return (
        f"{refused} although request header provider {installed.name!r} sent "
        f"{', '.join(installed.headers)}{audience}. Check that the audience is the OAuth client "
        f"id of the proxy in front of MLflow and that the identity is allowed through it "
        f"(IAP: role IAP-secured Web App User)."
    )
