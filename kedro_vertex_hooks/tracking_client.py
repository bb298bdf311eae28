"""One interface for the two ways this package talks to MLflow's tracking API.

Node steps talk REST without importing MLflow (:mod:`kedro_vertex_hooks.rest_client`); local
stores, auth plugins and the CLI use ``MlflowClient``
(:mod:`kedro_vertex_hooks.mlflow_client`). Run resolution and the writer take either, through
:class:`TrackingClient`; ``tests/test_tracking_client_conformance.py`` holds both to the same
requests and outcomes. The run shapes here are what the REST client returns; MLflow's own
entities have the same attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec


class RunInfo(msgspec.Struct, frozen=True):
    run_id: str
    experiment_id: str
    status: str
    lifecycle_stage: str
    run_name: str | None = None
    start_time: int | None = None


class RunData(msgspec.Struct, frozen=True):
    params: dict[str, str] = msgspec.field(default_factory=dict)
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    metrics: dict[str, float] = msgspec.field(default_factory=dict)


class Run(msgspec.Struct, frozen=True):
    info: RunInfo
    data: RunData

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Run:
        """A run from the REST API's JSON (``runs/get``, ``runs/create``, ``runs/search``)."""
        info, data = body["info"], body.get("data", {})
        return cls(
            info=RunInfo(
                run_id=info["run_id"],
                experiment_id=str(info["experiment_id"]),
                status=info.get("status", "RUNNING"),
                lifecycle_stage=info.get("lifecycle_stage", "active"),
                run_name=info.get("run_name"),
                start_time=_optional_int(info.get("start_time")),
            ),
            data=RunData(
                params=_pairs(data.get("params", [])),
                tags=_pairs(data.get("tags", [])),
                metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])},
            ),
        )


class Metric(msgspec.Struct, frozen=True):
    """One metric point, with the attributes of ``mlflow.entities.Metric``."""

    key: str
    value: float
    timestamp: int  # milliseconds since the epoch
    step: int = 0

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Metric:
        return cls(
            key=body["key"],
            value=float(body["value"]),
            timestamp=int(body.get("timestamp", 0)),
            step=int(body.get("step", 0)),
        )


class Experiment(msgspec.Struct, frozen=True):
    experiment_id: str
    lifecycle_stage: str


class TrackingClient(Protocol):
    """The tracking calls the hooks make, with ``MlflowClient``'s names and arguments."""

    def get_run(self, run_id: str) -> Any: ...

    def touch_run(self, run_id: str) -> RunInfo:
        """The run's info without its data (params, tags, metrics), which grow with the
        pipeline; raises like ``get_run`` for a run that does not exist, and reports a
        deleted run as ``lifecycle_stage == "deleted"``."""
        ...

    def get_metric_history(self, run_id: str, key: str) -> Sequence[Any]: ...

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> Any: ...

    def delete_run(self, run_id: str) -> None: ...

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = "", *, max_results: int = ...
    ) -> Sequence[Any]: ...

    def log_values(
        self,
        run_id: str,
        *,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        metrics: Sequence[Metric],
    ) -> None: ...

    def set_terminated(self, run_id: str, status: str = ...) -> None: ...

    def log_artifact(
        self, run_id: str, local_path: str, artifact_path: str | None = None
    ) -> None: ...

    def get_experiment_by_name(self, name: str) -> Any: ...

    def create_experiment(self, name: str) -> str: ...

    def restore_experiment(self, experiment_id: str) -> None: ...


def is_inactive_run_error(error: Exception) -> bool:
    """True for MLflow's refusal to change a deleted run (either client's exception)."""
    return getattr(
        error, "error_code", None
    ) == "INVALID_PARAMETER_VALUE" and "must be in the 'active' state" in str(error)


def _pairs(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {item["key"]: item.get("value", "") for item in items}


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
