"""MLflow internals this package touches, in one place: its request header provider list.

MLflow asks every registered provider for headers on each request and joins duplicates with a
space; it has no public API to replace or deduplicate a registration. The auth module keeps
exactly one entry for the installed provider through these two functions. Importing this
module does not import MLflow; calling them does.
"""

from __future__ import annotations

from typing import Any


def header_provider_list() -> list[Any]:
    """MLflow's list of registered request header providers (the one it iterates)."""
    from mlflow.tracking.request_header import registry

    return registry._request_header_provider_registry._registry


def set_header_provider_list(providers: list[Any]) -> None:
    from mlflow.tracking.request_header import registry

    registry._request_header_provider_registry._registry = providers
