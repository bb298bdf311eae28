"""MLflow internals this package touches, in one place.

- Its request header provider list: MLflow asks every registered provider for headers on each
  request and joins duplicates with a space; it has no public API to replace or deduplicate a
  registration. The auth module keeps exactly one entry for the installed provider.
- A run's info without its data: ``MlflowClient.update_run`` returns early without a status
  or name, and reads the whole run otherwise; the store's ``update_run_info`` with nothing to
  change is what the REST client sends as ``runs/update``.

Importing this module does not import MLflow; calling its functions does.
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


def run_info_by_empty_update(client: Any, run_id: str) -> Any:
    """The run's ``RunInfo`` from an update that changes nothing (see the module's doc)."""
    return client._tracking_client.store.update_run_info(run_id, None, None, None)
