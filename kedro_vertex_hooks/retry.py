"""The outage policy: which failures are transient, and how long they are waited out.

Both the writer (a step's queued writes) and the commands and run resolution (one call each)
retry through an outage of the tracking server for at most ``outage_budget_s``; anything that
is not transient (a refused token, a missing run, an untrusted certificate) fails at once.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import trim
from kedro_vertex_hooks.rest_client import RestApiError

logger = logging.getLogger(__name__)

# "API request to <url> failed with exception HTTPConnectionPool(...): Max retries exceeded
# with url: ... (Caused by ResponseError('too many 503 error responses'))"
_HTTP_CAUSE = re.compile(r"^(?P<request>.*?) failed with exception .*\(Caused by (?P<cause>.*)\)$")
_TLS_FAILURE_SIGNS = ("SSLError", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
T = TypeVar("T")


class TrackingError(UserError):
    """Tracking failed: raised into the step at start-up or in strict mode, else logged."""


class TrackingUnreachableError(TrackingError):
    """The tracking server did not answer within the outage budget."""


class OutageClock:
    """One outage budget for everything a step sends: it starts at the first failed call and
    ends at the next success, so a long outage is waited out once, not once per write."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._since: float | None = None
        self._lock = threading.Lock()

    def remaining_s(self) -> float:
        with self._lock:
            if self._since is None:
                return self.budget_s
            return max(0.0, self.budget_s - (time.monotonic() - self._since))

    def failed(self, started: float) -> bool:
        """Record a call started at ``started`` (monotonic) that failed; True if it starts a
        new outage."""
        with self._lock:
            if self._since is not None:
                return False
            self._since = started
            return True

    def recovered(self) -> float | None:
        """Record a successful call; the outage's length if one just ended."""
        with self._lock:
            since, self._since = self._since, None
        return None if since is None else time.monotonic() - since


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: no connection, timeouts, 5xx and 429 answers.

    A TLS failure (an untrusted certificate) is not an outage: waiting does not fix it.
    """
    if any(sign in str(exc) for sign in _TLS_FAILURE_SIGNS):
        return False
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # never import MLflow for this
    rest_errors: tuple[type[BaseException], ...] = (RestApiError,)
    if mlflow_exceptions is not None:
        rest_errors += (mlflow_exceptions.RestException,)
    if isinstance(exc, rest_errors):
        status = exc.get_http_status_code()  # type: ignore[attr-defined]
        return status >= 500 or status == 429
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        text = str(exc)
        return any(
            sign in text
            for sign in (
                "failed with exception",
                "Max retries exceeded",
                "error code 5",
                "error code 429",
            )
        )
    from requests.exceptions import RequestException

    # Network errors only: a local file error (an artifact gone, no permission) is not an
    # outage and must not be retried for the whole budget.
    return isinstance(exc, (ConnectionError, TimeoutError, RequestException))


def retry_transient(
    action: Callable[[], T], budget_s: float, what: str, clock: OutageClock | None = None
) -> tuple[T, bool]:
    """Call ``action``, retrying transient errors with backoff while the outage budget lasts.

    The budget is ``clock``'s (shared by the calls of a step), else ``budget_s`` for this
    call; it counts from the start of the first failed attempt, and a spent budget still
    allows one attempt. Returns the result and whether it came late (after retries or an
    outage); the last error is raised when the budget is spent or the error is not transient.
    """
    clock = clock or OutageClock(budget_s)
    delay = 0.5
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            result = action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if clock.failed(started):
                logger.warning(
                    "%s: tracking server not answering (%s); retrying for up to %.0f s",
                    what,
                    short_error(exc),
                    clock.budget_s,
                )
            left = clock.remaining_s()
            if left <= 0:
                raise
            attempt += 1
            time.sleep(min(delay, left))
            delay = min(delay * 2, 8.0)
            continue
        outage_s = clock.recovered()
        if outage_s is not None:
            logger.info("%s: tracking server answering again after %.1f s", what, outage_s)
        return result, attempt > 0 or outage_s is not None


def short_error(exc: BaseException) -> str:
    """``<Type>: <first line>``; MLflow's connection errors shortened to the URL and cause."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    cause = _HTTP_CAUSE.search(text)
    if cause:
        text = f"{cause.group('request')} failed: {cause.group('cause')}"
    return f"{type(exc).__name__}: {trim(text, 300)}"
