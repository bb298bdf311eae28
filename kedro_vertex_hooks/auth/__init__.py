"""Pluggable, fail-fast MLflow authentication: request header providers from a registry.

Importing this package imports neither MLflow nor google-auth. The core calls
``install_header_provider`` once per Kedro context and ``ensure_single_registration`` before
each pipeline and in ParallelRunner workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kedro_vertex_hooks.auth.diagnose import explain_refusal
from kedro_vertex_hooks.auth.errors import AuthError, redact_header_value
from kedro_vertex_hooks.auth.install import (
    InstalledProvider,
    ensure_single_registration,
    install_header_provider,
    installed_provider,
)
from kedro_vertex_hooks.auth.registry import ENTRY_POINT_GROUP, registered_provider_names

if TYPE_CHECKING:
    from kedro_vertex_hooks.auth.base import RequestHeaderProviderWithKedroContext

__all__ = [
    "ENTRY_POINT_GROUP",
    "AuthError",
    "InstalledProvider",
    "RequestHeaderProviderWithKedroContext",
    "ensure_single_registration",
    "explain_refusal",
    "install_header_provider",
    "installed_provider",
    "redact_header_value",
    "registered_provider_names",
]


def __getattr__(name: str) -> Any:
    # The base class may subclass MLflow's provider class: import it only when asked for.
    if name == "RequestHeaderProviderWithKedroContext":
        from kedro_vertex_hooks.auth.base import RequestHeaderProviderWithKedroContext

        return RequestHeaderProviderWithKedroContext
    raise AttributeError(f"module 'kedro_vertex_hooks.auth' has no attribute {name!r}")
