"""Entry point ``mlflow.request_header_provider``: MLflow calls it once, when it loads its
header provider registry, in any process that has this package installed.

It hands MLflow the provider this package installed in the process (when MLflow is imported
after the hooks installed it: an artifact upload, a kedro-mlflow dataset, user code), and an
inert provider otherwise. It imports nothing: a process that never used this package's auth
gets the inert provider without loading the package's modules.
"""

from __future__ import annotations

import sys
from typing import Any

_INSTALL_MODULE = "kedro_vertex_hooks.auth.install"


class InertProvider:
    """What MLflow registers from this entry point when no provider is installed."""

    def in_context(self) -> bool:
        return False

    def request_headers(self) -> dict[str, str]:
        return {}


def installed_provider_object() -> Any | None:
    """The provider object installed in this process, if any, without importing the auth
    package: a process that installed one has imported it already."""
    install = sys.modules.get(_INSTALL_MODULE)
    installed = install.installed_provider() if install is not None else None
    return installed.provider if installed is not None else None


def provider_for_mlflow() -> Any:
    provider = installed_provider_object()
    return provider if provider is not None else InertProvider()
