"""Writes into the shared run: batched, queued, retried through outages, with explicit run ids.

Hooks hand :class:`RunWriter` plain dicts; it turns them into as few ``log_batch`` requests as
MLflow allows, keeps them through a server outage for a bounded time, resolves parameter
conflicts, and reports at the end what was delivered late or given up. It only ever uses
a tracking client (REST or ``MlflowClient``) with an explicit run id, never the fluent API's
active run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

import msgspec

from kedro_vertex_hooks.batching import (
    Load,
    Write,
    deadline_of,
    last_batch_start,
    requests_of,
    shares_a_request,
)
from kedro_vertex_hooks.known_params import KnownParams, ParamConflictError, is_param_race
from kedro_vertex_hooks.records import Outcomes, read_outcomes
from kedro_vertex_hooks.retry import (
    OutageClock,
    TrackingError,
    TrackingUnreachableError,
    is_transient,
    retry_transient,
    short_error,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from kedro_vertex_hooks.tracking_client import TrackingClient

logger = logging.getLogger(__name__)

T = TypeVar("T")


def in_background(action: Callable[[], T], name: str) -> Future[T]:
    """Run ``action`` on a daemon thread; its result or exception in the future."""
    from concurrent.futures import Future

    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(action())
        except BaseException as exc:  # handed to the thread that waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name=f"kedro-vertex-hooks-{name}", daemon=True).start()
    return future


class DeliveryReport(msgspec.Struct):
    """What one step wrote, counted in values (params, tags, metrics, statuses, artifacts)."""

    delivered: int = 0
    delivered_late: int = 0
    given_up: int = 0
    undelivered: list[str] = msgspec.field(default_factory=list)  # names of what was given up
    conflicts: list[str] = msgspec.field(default_factory=list)
    last_error: str | None = None

    def give_up(self, names: list[str], error: str | None) -> None:
        self.given_up += len(names)
        self.undelivered.extend(names)
        if error is not None:
            self.last_error = error

    def summary(self) -> str:
        text = (
            f"{self.delivered} value(s) delivered, {self.delivered_late} of them late "
            f"after a tracking outage, {self.given_up} given up"
        )
        return text + (f" (last error: {self.last_error})" if self.last_error else "")


class RunWriter:
    """Queue of writes to one run, delivered by a background thread or on the caller's thread.

    ``known_params`` is what the run is known to hold (empty for a run resumed by id, which is
    not read whole); equal re-logs are dropped before sending and different values become
    conflicts instead of failing the batch (learnt from the server's refusal otherwise).

    Through an outage, writes wait in the queue and are retried within ``outage_budget_s``
    (one budget per outage, shared by every write and read of the step); a busy server is
    waited for within ``overload_budget_s`` (None: as long as it answers). What cannot be
    delivered is recorded in :attr:`report` with a warning, never raised from a background
    write, unless ``strict``: then writes are synchronous and any tracking error is raised.
    """

    def __init__(
        self,
        client: TrackingClient,
        run_id: str,
        known_params: Mapping[str, str],
        *,
        background: bool,
        outage_budget_s: float,
        on_param_conflict: Literal["tag", "fail"],
        strict: bool,
        overload_budget_s: float | None = None,
        requests_at_once: int = 1,
    ) -> None:
        self._client = client
        self._requests_at_once = requests_at_once
        self.run_id = run_id
        self._known_params = KnownParams(run_id, known_params, on_param_conflict)
        self._clock = OutageClock(outage_budget_s, overload_budget_s)
        self._strict = strict
        self._background = background and not strict
        self.report = DeliveryReport()
        self._lock = threading.Lock()  # the report
        self._params_lock = threading.Lock()
        self._start_queue()

    # -- public surface -------------------------------------------------------------------
    def submit(self, write: Write, *, wait: bool = False) -> None:
        """Queue ``write``; with ``wait`` (or without a background thread) deliver it now."""
        if write.is_empty():
            return
        self._check_pid()
        self._record_conflicts(self._known_params.move_conflicts(write))
        if self._background and not wait:
            self._queue.put(write)
            return
        self.flush()
        if self._strict:
            self._deliver(write)
        else:
            self._deliver_logged(write, in_caller=True)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Deliver everything queued so far; False if ``timeout_s`` ran out first.

        Without ``timeout_s`` this waits as long as the budgets let the writes be retried
        (with no overload budget, as long as a busy server keeps answering)."""
        self._check_pid()
        if not self._background:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def read_outcomes(self) -> Outcomes | None:
        """The nodes' outcomes recorded so far (see records.py), read through an outage like
        a write; None (with a warning) when they cannot be read; in strict mode the error is
        raised."""
        return self._read(lambda: read_outcomes(self._client, self.run_id), "node outcomes")

    def read_outcomes_ahead(self) -> Future[Outcomes | None]:
        """:meth:`read_outcomes` on a daemon thread, while the caller goes on."""
        return in_background(self.read_outcomes, "outcomes")

    def waiting_out_trouble(self) -> bool:
        """Whether a call failed and is being retried (none has succeeded since)."""
        return self._clock.in_trouble()

    def set_status_alongside(self, status: str) -> Future[None]:
        """Set the run's status on a daemon thread while the caller flushes the queue: a
        status already decided and the step's last record then take one round trip, not two.

        MLflow accepts writes into a terminated run, so the order they land in does not
        matter; what cannot be delivered is reported like any other write (raised in strict
        mode, from the future)."""
        write = Write(status=status)
        deliver = self._deliver if self._strict else self._deliver_logged
        return in_background(lambda: deliver(write), "status")

    def _read(self, action: Callable[[], T], what: str) -> T | None:
        where = f"MLflow run {self.run_id}"
        try:
            return self._call(action, where)[0]
        except Exception as exc:
            if self._strict:
                raise
            with self._lock:
                self.report.last_error = short_error(exc)
            logger.warning("%s: cannot read %s: %s", where, what, self.report.last_error)
            return None

    def close(self, timeout_s: float | None = None) -> DeliveryReport:
        """Flush, stop the background thread and log what was late or lost."""
        finished = self.flush(timeout_s)
        if not finished:
            with self._lock:
                waiting = [item for item in list(self._queue.queue) if isinstance(item, Write)]
                self.report.give_up([n for item in waiting for n in item.names()], None)
        if self._background and self._pid == os.getpid():
            self._queue.put(None)
        if self.report.delivered_late or self.report.given_up:
            # A warning even when all arrived late: the step's log is where users look.
            logger.warning("MLflow run %s: %s", self.run_id, self.report.summary())
        return self.report

    # -- queue handling -------------------------------------------------------------------
    def _start_queue(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Write | threading.Event | None] = queue.Queue()
        if self._background:
            self._thread = threading.Thread(
                target=self._drain, name="kedro-vertex-hooks-writer", daemon=True
            )
            self._thread.start()

    def _check_pid(self) -> None:
        """After a fork (ParallelRunner) the writer thread is gone: deliver synchronously."""
        if self._pid != os.getpid():
            self._background = False
            self._start_queue()

    def _drain(self) -> None:
        """Background loop: merge whatever is waiting into as few requests as possible."""
        carried: list[Write] = []  # writes that did not fit the last batch's requests
        while True:
            items: list[Write | threading.Event | None] = [*carried] or [self._queue.get()]
            carried = []
            # Writes that queued while the last batch was sent join this one at once. When
            # they fill requests beyond those of the last write's batch, the full ones go
            # now, together; the writes of that last batch wait for more, as any batch does.
            while isinstance(items[-1], Write):
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if isinstance(items[-1], Write):
                writes = [item for item in items if isinstance(item, Write)]
                start = last_batch_start(writes)
                if start:
                    items, carried = items[:start], writes[start:]
                else:
                    carried = self._linger(items)
            while not carried:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._send_items(items):
                return

    def _linger(self, items: list[Write | threading.Event | None]) -> list[Write]:
        """Let writes made in quick succession (a short node's start and end, or the end of
        one node and the start of the next) join ``items`` to share their requests: each
        write waits at most its own linger; a flush or the stop ends the wait, and so does a
        write that would not share a request (returned, to start the next batch)."""
        deadline = min(deadline_of(item) for item in items)
        load = Load()
        for item in items:
            load = load.plus(item) if isinstance(item, Write) else load
        while isinstance(items[-1], Write):
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, Write) and not shares_a_request(load, item):
                return [item]
            items.append(item)
            load = load.plus(item) if isinstance(item, Write) else load
            deadline = min(deadline, deadline_of(item))
        return []

    def _send_items(self, items: list[Write | threading.Event | None]) -> bool:
        """Deliver ``items`` in order, writes merged up to a status or an artifact; wake the
        flushes among them. True when the stop was reached."""
        batch: Write | None = None
        for item in items:
            if isinstance(item, Write):
                if batch is not None and batch.status is None and batch.artifact is None:
                    batch.merge(item)
                    batch.status, batch.artifact = item.status, item.artifact
                    continue
                if batch is not None:
                    self._deliver_logged(batch)
                batch = item
                continue
            if batch is not None:
                self._deliver_logged(batch)
                batch = None
            if item is None:
                return True
            item.set()
        if batch is not None:
            self._deliver_logged(batch)
        return False

    def _deliver_logged(self, write: Write, in_caller: bool = False) -> None:
        """Deliver, or record the write as given up: tracking must not fail the node.

        A parameter conflict with ``on_param_conflict="fail"`` is raised when delivering on
        the caller's thread; the background thread can only record it.
        """
        try:
            self._deliver(write)
        except Exception as exc:
            if in_caller and isinstance(exc, ParamConflictError):
                raise
            names = write.names()
            message = str(exc) if isinstance(exc, TrackingError) else short_error(exc)
            with self._lock:
                self.report.give_up(names, message)
            logger.warning(
                "MLflow run %s: %d value(s) given up: %s", self.run_id, len(names), message
            )

    # -- delivery -------------------------------------------------------------------------
    def _deliver(self, write: Write) -> None:
        size = write.size()
        # Writes with params go one at a time: what a write sends is what the run is not known
        # to hold yet. Anything else (a status set alongside the last record) need not wait.
        with self._params_lock if write.params else contextlib.nullcontext():
            pending = requests_of(write, self._known_params.new_in(write))
            _, late = self._call(lambda: self._send(write, pending), f"MLflow run {self.run_id}")
        with self._lock:
            self.report.delivered += size
            if late:
                self.report.delivered_late += size

    def _call(self, action: Callable[[], T], what: str) -> tuple[T, bool]:
        """Run ``action`` through an outage on the writer's clock; (result, was it late)."""
        try:
            return retry_transient(action, self._clock, what)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise TrackingUnreachableError(
                f"{what}: the tracking server {self._clock.exhausted()}: {short_error(exc)}"
            ) from None

    def _send(self, write: Write, pending: list[Write]) -> None:
        """Send the requests of ``write`` still ``pending``, then its artifact and status.

        A tracking server gets up to ``requests_at_once`` of them at once: a write holds each
        key once, so the order they land in does not matter, and a process that logs many
        params waits for a round trip per few requests, not per request. A request that
        arrived leaves ``pending``: a retry after another one failed does not send it again.
        """
        if len(pending) > 1 and self._requests_at_once > 1:
            from concurrent.futures import ThreadPoolExecutor

            workers = min(len(pending), self._requests_at_once)
            with ThreadPoolExecutor(workers, thread_name_prefix="kedro-vertex-hooks-send") as pool:
                sent = [(request, pool.submit(self._send_request, request)) for request in pending]
            failed = [(request, exc) for request, f in sent if (exc := f.exception()) is not None]
            pending[:] = [request for request, _ in failed]
            if failed:
                raise failed[0][1]
        while pending:
            self._send_request(pending[0])
            pending.pop(0)
        if write.artifact:
            path, folder = write.artifact
            self._client.log_artifact(self.run_id, path, folder)
        if write.status:
            self._client.set_terminated(self.run_id, write.status)

    def _send_request(self, request: Write, *, refreshed: bool = False) -> None:
        try:
            self._client.log_values(
                self.run_id, params=request.params, tags=request.tags, metrics=request.metrics
            )
        except Exception as exc:
            if refreshed or not request.params or not is_param_race(exc):
                raise
            # Another container logged one of these keys since we read the run: refresh once;
            # equal values are then not sent again, other values become conflicts.
            logged = self._client.get_run(self.run_id).data.params
            self._record_conflicts(self._known_params.refresh(logged, request))
            self._send_request(request, refreshed=True)
            return
        self._known_params.learn(request.params)

    def _record_conflicts(self, keys: list[str]) -> None:
        if keys:
            with self._lock:
                self.report.conflicts.extend(keys)
