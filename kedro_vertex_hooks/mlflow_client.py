"""The MLflow client, for what only it can do: local stores, artifacts, the CLI's calls.

Importing this module imports MLflow. It adds to ``MlflowClient`` the one call the writer
makes in its own terms (:meth:`MlflowTrackingClient.log_values`), the same call
:class:`~kedro_vertex_hooks.rest_client.RestTrackingClient` offers.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from kedro_vertex_hooks.auth import ensure_single_registration


class MlflowTrackingClient(MlflowClient):
    """``MlflowClient`` plus ``log_values``: the writer's batch as plain mappings."""

    def log_values(
        self,
        run_id: str,
        *,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        timestamp_ms: int,
    ) -> None:
        self.log_batch(
            run_id,
            metrics=[Metric(k, float(v), timestamp_ms, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )


def mlflow_tracking_client(tracking_uri: str) -> MlflowTrackingClient:
    """A client for ``tracking_uri`` that sends the installed provider's header once.

    The URI is also made the fluent API's default, for kedro-mlflow's datasets.
    """
    ensure_single_registration()
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowTrackingClient(tracking_uri=tracking_uri)
