"""One process's part of the shared run: what a node start, end or failure writes, and when
the run's status changes.

The hooks translate Kedro events into calls on :class:`TrackingSession`; it decides what to
write and hands it to the :class:`~kedro_vertex_hooks.writer.RunWriter`. Worker processes
(ParallelRunner) rebuild their session from a
:class:`~kedro_vertex_hooks.worker_spec.SessionSpec`, which the parent exports in the
environment.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kedro_vertex_hooks.config import (
    HookOptions,
    ProjectConfig,
)
from kedro_vertex_hooks.connection import connect
from kedro_vertex_hooks.datasets import artifact_destinations, metric_values
from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import (
    DEFAULT_PIPELINE,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    NODE_COMPLETED,
    NODE_FAILED,
    NODE_RUNNING,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RUNNING,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_LATEST_NODE,
    TAG_NODE_ENDED,
    TAG_NODE_HOST,
    TAG_NODE_STARTED,
    TAG_NODE_STATUS,
    TAG_PIPELINE,
    error_text,
    legal_key,
    node_key,
)
from kedro_vertex_hooks.params import prepare_params
from kedro_vertex_hooks.resolve import (
    ENV_RUN_ID,
    ResolvedRun,
    RunSource,
    job_tags,
    resolve_run,
)
from kedro_vertex_hooks.retry import (
    OutageClock,
    TrackingError,
    TrackingUnreachableError,
    UndeliveredError,
    is_transient,
    retry_transient,
    short_error,
)
from kedro_vertex_hooks.status import every_node_completed, step_end_status, step_start_status
from kedro_vertex_hooks.worker_spec import SESSION_ENV, SessionSpec, in_worker_process
from kedro_vertex_hooks.writer import RunWriter, Write

if TYPE_CHECKING:
    from kedro_vertex_hooks.tracking_client import TrackingClient

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class TrackingSession:
    """The shared run as seen by one process: node events in, batched writes out."""

    def __init__(
        self,
        client: TrackingClient,
        spec: SessionSpec,
        options: HookOptions,
        run: ResolvedRun | None,
        source: RunSource,
    ) -> None:
        self.client = client
        self.spec = spec
        self.run_id = spec.run_id
        self.options = options
        self.source = source
        self._run = run
        self._params_config = spec.params
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pending_run_tags: dict[str, str] = {}
        self._pending_status: str | None = None
        self._failure_recorded = False
        self._saving: dict[str, tuple[set[str], Write]] = {}  # node -> outputs not yet saved
        self._in_worker = in_worker_process()
        self.writer = RunWriter(
            client,
            spec.run_id,
            run.params if run else {},
            background=options.background_writes and not self._in_worker,
            outage_budget_s=options.outage_budget_s,
            overload_budget_s=options.overload_budget_s,
            on_param_conflict=options.on_param_conflict,
            strict=options.strict,
        )

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        config: ProjectConfig,
        options: HookOptions,
        source: RunSource,
        kedro_context: Any = None,
        pipeline_name: str = DEFAULT_PIPELINE,
    ) -> TrackingSession:
        """Resolve and check the run (retrying through a short outage) and connect to it."""
        client = connect(config, options, kedro_context)
        what = f"Tracking URI {config.tracking_uri}"
        clock = OutageClock(options.outage_budget_s, options.overload_budget_s)
        created: list[str] = []  # kept across retries: a losing run is deleted on the next
        try:
            run, _ = retry_transient(
                lambda: resolve_run(
                    client,
                    source,
                    config.tracking_uri,
                    config.experiment_name,
                    options.run_search_settle_s,
                    new_run_tags={TAG_PIPELINE: pipeline_name},
                    created=created,
                ),
                clock,
                what,
            )
        except UserError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise _refused(exc, source, config.tracking_uri) from None
            hint = (
                ""
                if options.run_untracked_if_unreachable
                else " Set MlflowRunHooks(run_untracked_if_unreachable=True) to run untracked."
            )
            raise TrackingUnreachableError(
                f"Cannot resolve the MLflow run ({source.describe()}): the tracking server at "
                f"{config.tracking_uri} {clock.exhausted()}: {short_error(exc)}.{hint}"
            ) from None
        spec = SessionSpec(
            tracking_uri=config.tracking_uri,
            run_id=run.run_id,
            params_config=config.mlflow.tracking.params.model_dump(),
            header_provider_config=config.header_provider.model_dump(),
            hook_options=options.model_dump(mode="json"),
        )
        return cls(client, spec, options, run, source)

    @classmethod
    def for_worker(cls, spec: SessionSpec, options: HookOptions) -> TrackingSession:
        """A session in a ParallelRunner worker, from the spec its parent exported."""
        client = connect(spec, options)
        return cls(client, spec, options, None, RunSource.from_env())

    def export_to_children(self) -> dict[str, str | None]:
        """Put the run in the environment for worker processes; returns what it replaced."""
        previous = {name: os.environ.get(name) for name in (SESSION_ENV, ENV_RUN_ID)}
        os.environ[SESSION_ENV] = self.spec.to_env()
        os.environ[ENV_RUN_ID] = self.run_id
        return previous

    def begin_pipeline(self, pipeline_name: str, pipeline_nodes: Iterable[str]) -> None:
        """Tag the run with the pipeline and the job, with the first node's write; a run
        that something else ended early (a start step's fluent run) is RUNNING again."""
        with self._lock:
            self._pending_run_tags = self._missing_run_tags(pipeline_name)
            if self._run is not None and self.source.mode != "local":
                self._pending_status = step_start_status(
                    self._run.status, self._run.tags, pipeline_nodes
                )

    def _missing_run_tags(self, pipeline_name: str) -> dict[str, str]:
        """Correlation tags the run lacks: set once, with the first node's write."""
        wanted = job_tags(self.source.job_id, self.source.job_name)
        wanted[TAG_PIPELINE] = pipeline_name
        for env_name, tag in self.options.env_tags.items():
            if os.environ.get(env_name):
                wanted[legal_key(tag)] = os.environ[env_name]
        have = self._run.tags if self._run else {}
        return {k: v for k, v in wanted.items() if have.get(k) != v}

    # -- node events -----------------------------------------------------------------------
    def node_started(self, node_name: str, inputs: Mapping[str, Any]) -> None:
        prepared = prepare_params(inputs, self._params_config, self.options.secret_patterns)
        with self._lock:
            self._started[node_name] = time.monotonic()
            run_tags, self._pending_run_tags = self._pending_run_tags, {}
            status, self._pending_status = self._pending_status, None
        tags = {
            **run_tags,
            **prepared.tags,
            TAG_LATEST_NODE: node_name,
            node_key(TAG_NODE_STATUS, node_name): NODE_RUNNING,
            node_key(TAG_NODE_STARTED, node_name): utc_now(),
            node_key(TAG_NODE_HOST, node_name): socket.gethostname(),
        }
        self.writer.submit(Write(params=prepared.params, tags=tags, status=status))

    def node_ran(self, node_name: str, outputs: Iterable[str]) -> None:
        """The node's function returned: it is ``completed`` once its outputs are saved.

        Kedro saves outputs after ``after_node_run``; a failed save must fail the node, not
        a node already reported as completed.
        """
        write = self._node_end(node_name, NODE_COMPLETED)
        pending = set(outputs)
        if not pending:
            self._submit_node_end(write)
            return
        with self._lock:
            self._saving[node_name] = (pending, write)

    def output_saved(self, node_name: str, dataset_name: str) -> None:
        with self._lock:
            entry = self._saving.get(node_name)
            if entry is None:
                return
            entry[0].discard(dataset_name)
            if entry[0]:
                return
            del self._saving[node_name]
        self._submit_node_end(entry[1])

    def _submit_node_end(self, write: Write) -> None:
        """A worker process (ParallelRunner) writes synchronously and has no step end of its
        own: what it could not deliver fails its node there, or it would be lost unsaid."""
        self.writer.submit(write)
        if self._in_worker:
            self.raise_if_undelivered()

    def node_failed(self, node_name: str, error: BaseException) -> None:
        """Record the failure and mark the run FAILED now, synchronously: it must not wait."""
        with self._lock:
            self._saving.pop(node_name, None)
        write = self._node_end(node_name, NODE_FAILED)
        write.tags.update(self._first_failure_tags(node_name, error))
        write.status = RUN_FAILED
        self.writer.submit(write, wait=True)
        self._failure_recorded = True

    def dataset_saved(self, dataset_name: str, dataset: Any, data: Any) -> None:
        """Log a dataset named in the hook options: its numbers as metrics, its files as
        artifacts under a folder named after it."""
        if dataset_name in self.options.metric_datasets:
            self.writer.submit(Write(metrics=metric_values(dataset_name, data)))
        if dataset_name in self.options.artifact_datasets and dataset is not None:
            for path, folder in artifact_destinations(dataset, dataset_name):
                self.writer.submit(Write(artifact=(str(path), folder)))

    def _node_end(self, node_name: str, status: str) -> Write:
        with self._lock:
            started = self._started.pop(node_name, None)
        metrics = {node_key(METRIC_NODE_PEAK_RSS, node_name): peak_rss_mb()}
        if started is not None:
            metrics[node_key(METRIC_NODE_DURATION, node_name)] = round(
                time.monotonic() - started, 3
            )
        tags = {
            node_key(TAG_NODE_STATUS, node_name): status,
            node_key(TAG_NODE_ENDED, node_name): utc_now(),
        }
        return Write(tags=tags, metrics=metrics)

    def _first_failure_tags(self, node_name: str | None, error: BaseException) -> dict[str, str]:
        """``kedro.failed_node``/``kedro.error``, unless an earlier failure already set them."""
        self.writer.flush()
        run = self.writer.read_run()
        if run is None or TAG_FAILED_NODE in run.data.tags:
            return {}
        tags = {TAG_ERROR: error_text(error)}
        if node_name:
            tags[TAG_FAILED_NODE] = node_name
        return tags

    # -- step end --------------------------------------------------------------------------
    def in_flight_nodes(self) -> list[str]:
        with self._lock:
            return [*self._started, *self._saving]

    def finish_step(self, pipeline_nodes: Iterable[str], downstream_nodes: Iterable[str]) -> str:
        """After the last node of this step: set the status the whole run now deserves.

        The run is read again (after this step's writes) unless it cannot be complete yet:
        it was RUNNING at the start and a node downstream of this step, which the orchestrator
        starts only after this step, was unfinished then. That saves most steps a round trip.
        """
        self.writer.flush()
        target: str | None = None
        if self.source.mode == "local":
            target = RUN_FINISHED
        elif self._cannot_be_complete(downstream_nodes):
            target = None
        elif run := self.writer.read_run():
            target = step_end_status(run.info.status, run.data.tags, pipeline_nodes)
        if target:
            self.writer.submit(Write(status=target), wait=True)
        self.close()
        self.raise_if_undelivered()
        return target or RUN_RUNNING

    def _cannot_be_complete(self, downstream_nodes: Iterable[str]) -> bool:
        """True when the end read can be skipped; never after a write that came late, whose
        old copy could have overwritten a node status (the read repairs that)."""
        run = self._run
        report = self.writer.report
        if run is None or run.status != RUN_RUNNING or report.delivered_late or report.given_up:
            return False
        return not every_node_completed(run.tags, downstream_nodes)

    def fail_step(self, error: BaseException) -> None:
        """The step failed: nodes still in flight failed with it, and the run is FAILED.

        A node failure was already recorded by :meth:`node_failed`; this also covers errors
        outside a node (saving an output, a hook) and workers whose hooks never reported.
        """
        in_flight = self.in_flight_nodes()
        for node_name in in_flight:
            self.node_failed(node_name, error)
        if not in_flight and not self._failure_recorded:
            write = Write(tags=self._first_failure_tags(None, error), status=RUN_FAILED)
            self.writer.submit(write, wait=True)
        self.close()

    def close(self) -> None:
        self.writer.close()

    def raise_if_undelivered(self) -> None:
        """With ``on_undelivered="fail"`` (the default), a step whose writes were given up
        must not exit 0: the orchestrator would not retry it and the run would miss them."""
        report = self.writer.report
        if not report.given_up or self.options.on_undelivered != "fail":
            return
        raise UndeliveredError(self.run_id, report.undelivered, report.last_error)


def _refused(exc: Exception, source: RunSource, tracking_uri: str) -> TrackingError:
    """The server answered, but not with the run: one line, with the likely cause in words."""
    from kedro_vertex_hooks.auth import explain_refusal, installed_provider

    reason = explain_refusal(exc, installed_provider())
    return TrackingError(
        f"Cannot resolve the MLflow run ({source.describe()}) at tracking URI {tracking_uri}: "
        f"{short_error(exc)}" + (f". {reason}" if reason else "")
    )
