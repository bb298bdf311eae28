"""The MLflow client, for what only it can do: local stores, artifacts, the CLI's calls.

Importing this module imports MLflow. It adds to ``MlflowClient`` the one call the writer
makes in its own terms (:meth:`MlflowTrackingClient.log_values`), the same call
:class:`~kedro_vertex_hooks.rest_client.RestTrackingClient` offers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunInfo, RunTag

from kedro_vertex_hooks.auth import ensure_single_registration
from kedro_vertex_hooks.mlflow_compat import run_info_by_empty_update
from kedro_vertex_hooks.tracking_client import is_inactive_run_error

if TYPE_CHECKING:
    from kedro_vertex_hooks import tracking_client


class MlflowTrackingClient(MlflowClient):
    """``MlflowClient`` plus the two calls the hooks make in their own terms."""

    def touch_run(self, run_id: str) -> RunInfo:
        """The run's info without its data, from an update that changes nothing."""
        try:
            return run_info_by_empty_update(self, run_id)
        except Exception as exc:
            if not is_inactive_run_error(exc):
                raise
            return self.get_run(run_id).info

    def log_values(
        self,
        run_id: str,
        *,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        metrics: Sequence[tracking_client.Metric],
    ) -> None:
        self.log_batch(
            run_id,
            metrics=[Metric(m.key, float(m.value), m.timestamp, m.step) for m in metrics],
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
