"""The outage policy: which failures are transient, and how long they are waited out.

Two kinds of trouble, two budgets. A server that does not answer at all (refused or reset
connections, a gateway's 502/504, other 5xx) is *down*: its writes are retried for
``outage_budget_s``. A server that answers "busy" (429, 503) or too slowly (a read timeout)
is *overloaded*, not gone: by default its writes are retried for as long as it keeps
answering (``overload_budget_s=None``), because giving up on a busy server loses data that
would have landed. Anything else (a refused token, a missing run, an untrusted certificate)
fails at once.
"""

from __future__ import annotations

import logging
import math
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import trim
from kedro_vertex_hooks.rest_client import RestApiError

logger = logging.getLogger(__name__)

# "API request to <url> failed with exception HTTPConnectionPool(...): Max retries exceeded
# with url: ... (Caused by ResponseError('too many 503 error responses'))"
_HTTP_CAUSE = re.compile(r"^(?P<request>.*?) failed with exception .*\(Caused by (?P<cause>.*)\)$")
_TLS_FAILURE_SIGNS = ("SSLError", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
# How MLflow's client words a busy answer or a slow one once its own retries are spent.
_BUSY_SIGNS = (
    "too many 429 error responses",
    "too many 503 error responses",
    "error code 429",
    "error code 503",
    "Read timed out",
    "ReadTimeoutError",
)
_DOWN_SIGNS = ("failed with exception", "Max retries exceeded", "error code 5")
# MLflow's SQL store holds a pooled connection while log-batch opens a second one, so as
# many concurrent writes as the pool has connections (5 + 10 overflow by default) wait on
# each other until the pool's 30 s timeout; the request then fails with HTTP 400
# "(sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 overflow 10 reached": busy.
_STORE_BUSY_SIGNS = ("QueuePool limit", "sqlalchemy.exc.TimeoutError")
T = TypeVar("T")
Trouble = Literal["busy", "down"]
BUSY_STATUSES = frozenset({429, 503})
# The longest pause between two tries: short for a server that is away (to resume as soon
# as it is back), long for a busy one (so that many steps retrying do not keep it busy).
MAX_PAUSE_S: dict[Trouble, float] = {"down": 8.0, "busy": 30.0}


class TrackingError(UserError):
    """Tracking failed: raised into the step at start-up or in strict mode, else logged."""


class TrackingUnreachableError(TrackingError):
    """The tracking server did not answer (or stayed busy) past its budget."""


class UndeliveredError(TrackingError):
    """Some of a step's writes never reached the run: the step fails, naming them."""

    def __init__(self, run_id: str, names: list[str], last_error: str | None) -> None:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        super().__init__(
            f"MLflow run {run_id}: {len(names)} value(s) of this step could not be delivered "
            f"({last_error or 'no answer'}); missing from the run: {shown}. The nodes ran "
            "and their outputs are saved; the step fails so that the orchestrator can retry "
            "it. Set MlflowRunHooks(on_undelivered='warn') to let it succeed with a warning."
        )


class OutageClock:
    """The budgets of one step's calls: an outage is waited out once, not once per write.

    The outage budget counts from the first call that got no answer and restarts whenever
    the server answers, even "busy"; the overload budget (None: no limit) counts from the
    first failed call. Both end with the next call that succeeds.
    """

    def __init__(self, budget_s: float, overload_budget_s: float | None = None) -> None:
        self.budget_s = budget_s
        self.overload_budget_s = overload_budget_s
        self._down_since: float | None = None
        self._trouble_since: float | None = None
        self._lock = threading.Lock()

    def remaining_s(self) -> float:
        """Seconds left to retry; ``math.inf`` while a busy server may be waited for."""
        with self._lock:
            now = time.monotonic()
            left = math.inf
            if self._down_since is not None:
                left = self.budget_s - (now - self._down_since)
            if self._trouble_since is not None and self.overload_budget_s is not None:
                left = min(left, self.overload_budget_s - (now - self._trouble_since))
            return max(0.0, left)

    def failed(self, started: float, trouble: Trouble) -> bool:
        """Record a call started at ``started`` (monotonic) that failed; True if it starts
        a period worth a log line (trouble begins, or a busy server stops answering)."""
        with self._lock:
            new = self._trouble_since is None
            if new:
                self._trouble_since = started
            if trouble == "busy":
                self._down_since = None
                return new
            if self._down_since is None:
                self._down_since = started
                return True
            return False

    def in_trouble(self) -> bool:
        """Whether the last call failed and none has succeeded since."""
        with self._lock:
            return self._trouble_since is not None

    def recovered(self) -> float | None:
        """Record a successful call; the trouble's length if one just ended."""
        with self._lock:
            since, self._trouble_since, self._down_since = self._trouble_since, None, None
        return None if since is None else time.monotonic() - since

    def exhausted(self) -> str:
        """Which budget ran out, in the words of its option."""
        with self._lock:
            down = self._down_since is not None
        if down or self.overload_budget_s is None:
            return f"did not answer for {self.budget_s:.0f} s (outage_budget_s)"
        return f"stayed busy for {self.overload_budget_s:.0f} s (overload_budget_s)"


def trouble_kind(exc: BaseException) -> Trouble | None:
    """``"busy"`` (429, 503, a read timeout, the SQL store's connection pool exhausted),
    ``"down"`` (no answer, other 5xx), or None when retrying cannot help. A TLS failure (an
    untrusted certificate) is not an outage."""
    if _mentions(exc, _TLS_FAILURE_SIGNS):
        return None
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # never import MLflow for this
    rest_errors: tuple[type[BaseException], ...] = (RestApiError,)
    if mlflow_exceptions is not None:
        rest_errors += (mlflow_exceptions.RestException,)
    if isinstance(exc, rest_errors):
        status = exc.get_http_status_code()  # type: ignore[attr-defined]
        if status in BUSY_STATUSES or _mentions(exc, _STORE_BUSY_SIGNS):
            return "busy"
        return "down" if status >= 500 else None
    from requests.exceptions import ReadTimeout, RequestException

    chain = [exc, *([exc.__cause__] if exc.__cause__ is not None else [])]
    if any(isinstance(e, ReadTimeout) for e in chain):
        return "busy"
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        if _mentions(exc, _BUSY_SIGNS):
            return "busy"
        return "down" if _mentions(exc, _DOWN_SIGNS) else None
    # Network errors only: a local file error (an artifact gone, no permission) is not an
    # outage and must not be retried for the whole budget.
    if isinstance(exc, (ConnectionError, TimeoutError, RequestException)):
        return "busy" if "Read timed out" in str(exc) else "down"
    return None


def _mentions(exc: BaseException, signs: tuple[str, ...]) -> bool:
    text = str(exc)
    return any(sign in text for sign in signs)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: no answer, a busy or slow server, 5xx."""
    return trouble_kind(exc) is not None


def retry_transient(action: Callable[[], T], clock: OutageClock, what: str) -> tuple[T, bool]:
    """Call ``action``, retrying transient errors with backoff while ``clock`` allows.

    A spent budget still allows one attempt. Pauses double from 0.5 s up to the trouble's
    ``MAX_PAUSE_S``, each a random 50-100 % of that, so that steps that failed together do
    not retry together. Returns the result and whether it came late (after retries or an
    outage); the last error is raised when the budget is spent or the error is not transient.
    """
    pause_s = 0.5
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            result = action()
        except Exception as exc:
            trouble = trouble_kind(exc)
            if trouble is None:
                raise
            if clock.failed(started, trouble):
                logger.warning(
                    "%s: tracking server %s (%s); %s",
                    what,
                    "busy" if trouble == "busy" else "not answering",
                    short_error(exc),
                    _retry_plan(clock, trouble),
                )
            left = clock.remaining_s()
            if left <= 0:
                raise
            attempt += 1
            pause_s = min(pause_s, MAX_PAUSE_S[trouble])
            time.sleep(min(pause_s * random.uniform(0.5, 1.0), left))
            pause_s *= 2
            continue
        outage_s = clock.recovered()
        if outage_s is not None:
            logger.info("%s: tracking server answering again after %.1f s", what, outage_s)
        return result, attempt > 0 or outage_s is not None


def _retry_plan(clock: OutageClock, trouble: Trouble) -> str:
    if trouble == "down":
        return f"retrying for up to {clock.budget_s:.0f} s (outage_budget_s)"
    if clock.overload_budget_s is None:
        return "retrying while it answers (overload is not an outage)"
    return f"retrying for up to {clock.overload_budget_s:.0f} s (overload_budget_s)"


def short_error(exc: BaseException) -> str:
    """``<Type>: <first line>``; MLflow's connection errors shortened to the URL and cause."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    cause = _HTTP_CAUSE.search(text)
    if cause:
        text = f"{cause.group('request')} failed: {cause.group('cause')}"
    return f"{type(exc).__name__}: {trim(text, 300)}"
