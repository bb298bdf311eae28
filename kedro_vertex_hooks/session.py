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
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from kedro_vertex_hooks.batching import START_LINGER_S, Write, requests_at_once
from kedro_vertex_hooks.config import HookOptions, ProjectConfig, as_plain
from kedro_vertex_hooks.connection import connect
from kedro_vertex_hooks.datasets import artifact_destinations, metric_values
from kedro_vertex_hooks.naming import (
    DEFAULT_PIPELINE,
    ENV_RUN_ID,
    METRIC_NODE_COMPLETED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RUNNING,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_LATEST_NODE,
    TAG_NODE_ERROR,
    TAG_NODE_HOST,
    TAG_PIPELINE,
    error_text,
    legal_key,
    node_key,
)
from kedro_vertex_hooks.params import prepare_params
from kedro_vertex_hooks.records import (
    end_points,
    node_positions,
    now_ms,
    outside_position,
    peak_rss_mb,
    process_started_at,
    start_points,
)
from kedro_vertex_hooks.resolve import (
    ResolvedRun,
    RunSource,
    job_tags,
    resolve_step_run,
)
from kedro_vertex_hooks.retry import (
    UndeliveredError,
)
from kedro_vertex_hooks.status import step_end_status, step_start_status, was_ended_early
from kedro_vertex_hooks.tracking_client import Metric
from kedro_vertex_hooks.worker_spec import SESSION_ENV, SessionSpec, in_worker_process
from kedro_vertex_hooks.writer import RunWriter

if TYPE_CHECKING:
    from concurrent.futures import Future

    from kedro_vertex_hooks.records import Outcomes
    from kedro_vertex_hooks.tracking_client import TrackingClient

logger = logging.getLogger(__name__)


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
        self._positions = node_positions(spec.pipeline_nodes)
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pending_run_tags: dict[str, str] = {}
        self._pending_status: str | None = None
        self._failure_recorded = False
        self._first_node_started = False
        self._saving: dict[str, tuple[set[str], Write]] = {}  # node -> outputs not yet saved
        self._completed_here: set[int] = set()  # positions of the nodes this process completed
        self._outcomes_ahead: Future[Outcomes | None] | None = None
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
            requests_at_once=requests_at_once(spec.tracking_uri),
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
        client: TrackingClient | None = None,
        experiment_id: str | None = None,
    ) -> TrackingSession:
        """Connect (unless given the ``client``), then resolve and check the run, retrying
        through a short outage (``experiment_id``: the experiment, when already looked up)."""
        client = client if client is not None else connect(config, options, kedro_context)
        run = resolve_step_run(client, config, options, source, pipeline_name, experiment_id)
        spec = SessionSpec(
            tracking_uri=config.tracking_uri,
            run_id=run.run_id,
            params_config=as_plain(config.mlflow.tracking.params),
            header_provider_config=as_plain(config.header_provider),
            hook_options=as_plain(options),
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
        nodes = list(dict.fromkeys(pipeline_nodes))
        self.spec = msgspec.structs.replace(self.spec, pipeline_nodes=nodes)
        with self._lock:
            self._positions = node_positions(nodes)
            self._pending_run_tags = self._missing_run_tags(pipeline_name)
        run = self._run
        if run is None or self.source.mode == "local" or not was_ended_early(run.status):
            return
        outcomes = self.writer.read_outcomes()
        if outcomes is not None:
            with self._lock:
                self._pending_status = step_start_status(outcomes, len(nodes))

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
        started_at = time.time()
        with self._lock:
            self._started[node_name] = time.monotonic()
            run_tags, self._pending_run_tags = self._pending_run_tags, {}
            status, self._pending_status = self._pending_status, None
        tags = {**run_tags, **prepared.tags, TAG_LATEST_NODE: node_name}
        startup_s = self._startup_s(started_at)
        points = self._points(node_name, lambda at: start_points(at, started_at, startup_s))
        start = Write(
            params=prepared.params,
            tags=tags,
            metrics=points,
            status=status,
            linger_s=START_LINGER_S,
        )
        self.writer.submit(start)

    def _startup_s(self, started_at: float) -> float | None:
        """Its process's start-up, for the first node a process starts (later nodes of the
        same process did not wait for it)."""
        with self._lock:
            first, self._first_node_started = not self._first_node_started, True
        process_start = process_started_at() if first else None
        return None if process_start is None else max(0.0, started_at - process_start)

    def _points(self, node_name: str, build: Callable[[int], list[Metric]]) -> list[Metric]:
        """The node's record points, at its position; none for a node outside the pipeline
        (which Kedro does not run)."""
        position = self._positions.get(node_name)
        return build(position) if position is not None else []

    def node_ran(self, node_name: str, outputs: Iterable[str]) -> None:
        """The node's function returned: it is ``completed`` once its outputs are saved.

        Kedro saves outputs after ``after_node_run``; a failed save must fail the node, not
        a node already reported as completed.
        """
        write = self._node_end(node_name, completed=True)
        pending = set(outputs)
        if not pending:
            self._submit_node_end(node_name, write)
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
        self._submit_node_end(node_name, entry[1])

    def _submit_node_end(self, node_name: str, write: Write) -> None:
        """A worker process (ParallelRunner) writes synchronously and has no step end of its
        own: what it could not deliver fails its node there, or it would be lost unsaid."""
        position = self._positions.get(node_name)
        if position is not None:
            with self._lock:
                self._completed_here.add(position)
        self.writer.submit(write)
        if self._in_worker:
            self.raise_if_undelivered()

    def node_failed(self, node_name: str, error: BaseException) -> None:
        """Record the failure and mark the run FAILED now, synchronously: it must not wait."""
        with self._lock:
            self._saving.pop(node_name, None)
        write = self._node_end(node_name, completed=False)
        write.tags[node_key(TAG_NODE_ERROR, node_name)] = error_text(error)
        # Where to look for its logs; kept for failed nodes only: a tag per node would make
        # the run's row grow with the pipeline (~100 bytes per node with a pod's name).
        write.tags[node_key(TAG_NODE_HOST, node_name)] = socket.gethostname()
        write.tags.update(self._first_failure_tags(node_name, error))
        write.status = RUN_FAILED
        self.writer.submit(write, wait=True)
        self._failure_recorded = True

    def dataset_saved(self, dataset_name: str, dataset: Any, data: Any) -> None:
        """Log a dataset named in the hook options: its numbers as metrics, its files as
        artifacts under a folder named after it."""
        if dataset_name in self.options.metric_datasets:
            stamp = now_ms()
            values = metric_values(dataset_name, data)
            points = [Metric(key, value, stamp) for key, value in values.items()]
            self.writer.submit(Write(metrics=points))
        if dataset_name in self.options.artifact_datasets and dataset is not None:
            for path, folder in artifact_destinations(dataset, dataset_name):
                self.writer.submit(Write(artifact=(str(path), folder)))

    def _node_end(self, node_name: str, *, completed: bool) -> Write:
        with self._lock:
            started = self._started.pop(node_name, None)
        duration_s = time.monotonic() - started if started is not None else None
        points = self._points(
            node_name, lambda at: end_points(at, completed, duration_s, peak_rss_mb())
        )
        return Write(metrics=points)

    def _first_failure_tags(self, node_name: str | None, error: BaseException) -> dict[str, str]:
        """``kedro.failed_node``/``kedro.error``, unless an earlier failure was recorded."""
        self.writer.flush()
        outcomes = self.writer.read_outcomes()
        if outcomes is None or outcomes.any_failed:
            return {}
        tags = {TAG_ERROR: error_text(error)}
        if node_name:
            tags[TAG_FAILED_NODE] = node_name
        return tags

    # -- step end --------------------------------------------------------------------------
    def in_flight_nodes(self) -> list[str]:
        with self._lock:
            return [*self._started, *self._saving]

    def read_outcomes_ahead(self) -> None:
        """Read the nodes' outcomes while this step's nodes run (the hooks ask this of a step
        holding every leaf of the pipeline, which runs after every other node): when they
        decide the status, it is set without reading them again at the end (see
        :meth:`finish_step`). Steps with another leaf outside them would mostly read twice."""
        if self.source.mode != "local":
            self._outcomes_ahead = self.writer.read_outcomes_ahead()

    def finish_step(self, *, may_finish_pipeline: bool) -> str:
        """After the last node of this step: set the status the whole run now deserves.

        Only a step with no node downstream of it may finish the pipeline (the orchestrator
        starts such nodes only after this step): it sets FAILED or FINISHED from the nodes'
        outcomes. When the status is known before the step's last record is sent (a local
        run, which ran every node here, or outcomes read ahead that decide it), it is sent
        alongside that record (one round trip); otherwise the outcomes are read after the
        record. Every other step ends with its writes.
        """
        if self.source.mode == "local":
            target: str | None = RUN_FINISHED  # this process ran the whole pipeline
        else:
            target = self._status_decided_ahead() if may_finish_pipeline else None
        alongside = self.writer.set_status_alongside(target) if target else None
        self.writer.flush()
        if alongside is not None:
            alongside.result()
        elif may_finish_pipeline:
            outcomes = self.writer.read_outcomes()
            target = step_end_status(outcomes, len(self._positions)) if outcomes else None
            if target:
                self.writer.submit(Write(status=target), wait=True)
        self.close()
        self.raise_if_undelivered()
        return target or RUN_RUNNING

    def _status_decided_ahead(self) -> str | None:
        """FINISHED or FAILED from the outcomes read while this step's nodes ran, merged with
        the nodes it completed; None when they do not decide it.

        When every other node had completed, no other step can still be running, so the
        status is as true as if the outcomes were read after this step's writes. Otherwise
        (another leaf may be finishing at this moment) only reading after the writes is safe:
        of two steps that end together, at least one then sees both. A step whose writes
        were given up, or whose nodes ran in worker processes, reads the outcomes again too,
        and so does one whose writes are being retried through an outage: its status and
        its record would be retried apart, and a retried step opening in between would see
        the run FINISHED without this step's record and set it RUNNING again.
        A last record given up after the status was sent still fails the step (see
        :meth:`raise_if_undelivered`), so that the orchestrator retries it or ``finalize``
        reports the node as lost.
        """
        ahead, self._outcomes_ahead = self._outcomes_ahead, None
        if ahead is None or self.writer.report.given_up or self.writer.waiting_out_trouble():
            return None
        outcomes = ahead.result()
        if outcomes is None:
            return None
        with self._lock:
            merged = outcomes.with_completed(self._completed_here)
        return step_end_status(merged, len(self._positions))

    def fail_step(self, error: BaseException) -> None:
        """The step failed: nodes still in flight failed with it, and the run is FAILED.

        A node failure was already recorded by :meth:`node_failed`; this also covers errors
        outside a node (saving an output, a hook) and workers whose hooks never reported.
        """
        in_flight = self.in_flight_nodes()
        for node_name in in_flight:
            self.node_failed(node_name, error)
        if not in_flight and not self._failure_recorded:
            position = outside_position(self._positions)
            outside = Metric(METRIC_NODE_COMPLETED, 0.0, now_ms(), position)
            tags = self._first_failure_tags(None, error)
            self.writer.submit(Write(tags=tags, metrics=[outside], status=RUN_FAILED), wait=True)
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
