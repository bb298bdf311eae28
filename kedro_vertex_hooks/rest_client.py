"""The few MLflow tracking REST calls a node step makes, spoken without importing MLflow.

Importing the MLflow client costs every fresh ``kedro run --nodes X`` process 0.6-1 s, more
than the requests it then sends. :class:`RestTrackingClient` speaks the endpoints the hooks
need over ``requests``, with the MLflow client's own settings (``MLFLOW_HTTP_REQUEST_*``
timeouts and retries, ``MLFLOW_TRACKING_TOKEN`` / ``USERNAME`` / ``PASSWORD``, the TLS
variables) and the request header provider installed by :mod:`kedro_vertex_hooks.auth`.
Its method names and arguments are ``MlflowClient``'s, so run resolution and the writer take
either. :func:`rest_client_unsuitable` names what only the MLflow client can do; then the
hooks use :class:`~kedro_vertex_hooks.mlflow_client.MlflowTrackingClient`.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import distributions
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kedro_vertex_hooks.naming import trim
from kedro_vertex_hooks.records import now_ms
from kedro_vertex_hooks.tracking_client import (
    Experiment,
    Metric,
    Run,
    RunInfo,
    TrackingClient,
    is_inactive_run_error,
)

API_PREFIX = "/api/2.0/mlflow"
OWN_ENTRY_POINT = "kedro-vertex-hooks"
HEADER_PROVIDER_GROUP = "mlflow.request_header_provider"
# What MLflow's client retries (mlflow.utils.request_utils._TRANSIENT_FAILURE_RESPONSE_CODES).
RETRY_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
# The server's limits on one log-batch request (mlflow.utils.validation).
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
# Client settings this module does not reproduce: the MLflow client is used when one is set.
MLFLOW_ONLY_ENV_VARS = ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_AWS_SIGV4")
# MLflow's client reads a username and password from here; this module does not.
MLFLOW_CREDENTIALS_FILE = Path("~/.mlflow/credentials")
# The longest a request may wait for its answer once the server has been slow (MLflow's own
# default timeout): see RestTrackingClient._answer_was_late.
MAX_REQUEST_TIMEOUT_S = 120.0


class RestApiError(Exception):
    """An MLflow REST call answered with an error; shaped like MLflow's ``RestException``."""

    def __init__(self, status_code: int, error_code: str, message: str) -> None:
        super().__init__(f"{error_code} (HTTP {status_code}): {message}")
        self.status_code = status_code
        self.error_code = error_code

    def get_http_status_code(self) -> int:
        return self.status_code


class RestConnectionError(ConnectionError):
    """A REST call got no answer (refused, timed out, TLS); the message names the URL."""


def rest_client_unsuitable(tracking_uri: str) -> str | None:
    """Why the MLflow client must be used for ``tracking_uri``; None when REST will do."""
    scheme = urlsplit(tracking_uri).scheme
    if scheme not in ("http", "https"):
        return f"the tracking URI is not http(s) ({scheme or 'a path'})"
    for name in MLFLOW_ONLY_ENV_VARS:
        if os.environ.get(name):
            return f"{name} is set"
    if MLFLOW_CREDENTIALS_FILE.expanduser().is_file():
        return f"{MLFLOW_CREDENTIALS_FILE} exists"
    others = [name for name in _header_provider_entry_points() if name != OWN_ENTRY_POINT]
    if others:
        return f"other MLflow request header providers are installed ({', '.join(others)})"
    return None


def _header_provider_entry_points() -> list[str]:
    """Names in the entry-point group ``mlflow.request_header_provider``.

    Every step asks; ``importlib.metadata.entry_points()`` parses every distribution's entry
    points to answer (~5-10 ms of CPU), so only the files that name the group are parsed.
    """
    header = f"[{HEADER_PROVIDER_GROUP}]"
    names: list[str] = []
    for dist in distributions():
        text = dist.read_text("entry_points.txt")
        if text and header in text:
            names.extend(ep.name for ep in dist.entry_points.select(group=HEADER_PROVIDER_GROUP))
    return names


class RestTrackingClient:
    """MlflowClient's tracking calls used by the hooks, over MLflow's REST API.

    Artifacts go through ``artifact_client()``, called (and MLflow imported) only when a step
    logs one: the artifact store may be anything MLflow supports.
    """

    def __init__(
        self, tracking_uri: str, artifact_client: Callable[[], TrackingClient] | None = None
    ) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self._timeout_s = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
        self._max_retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
        self._backoff = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"))
        self._lock = threading.Lock()
        self._session: Any = None
        self._session_pid: int | None = None
        self._make_artifact_client = artifact_client
        self._artifact_client: TrackingClient | None = None
        self._artifact_lock = threading.Lock()
        self._http_session()  # now, on the caller's thread: see _new_session

    # -- runs -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        return Run.from_json(self._call("GET", "/runs/get", {"run_id": run_id})["run"])

    def touch_run(self, run_id: str) -> RunInfo:
        """An update that changes nothing: the server answers with the run's info alone
        (``runs/get`` would send every param, tag and metric of the run)."""
        try:
            body = self._call("POST", "/runs/update", {"run_id": run_id})
        except RestApiError as exc:
            if not is_inactive_run_error(exc):
                raise
            return self.get_run(run_id).info
        return Run.from_json({"info": body["run_info"]}).info

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        found: list[Metric] = []
        page_token: str | None = None
        while True:
            query: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if page_token:
                query["page_token"] = page_token
            body = self._call("GET", "/metrics/get-history", query)
            found.extend(Metric.from_json(item) for item in body.get("metrics", ()))
            page_token = body.get("next_page_token")
            if not page_token:
                return found

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> Run:
        body: dict[str, Any] = {
            "experiment_id": experiment_id,
            "start_time": start_time if start_time is not None else now_ms(),
            "tags": _key_values((tags or {}).items()),
        }
        if run_name:
            body["run_name"] = run_name
        return Run.from_json(self._call("POST", "/runs/create", body)["run"])

    def delete_run(self, run_id: str) -> None:
        self._call("POST", "/runs/delete", {"run_id": run_id})

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = "", *, max_results: int = 1000
    ) -> list[Run]:
        body = {
            "experiment_ids": experiment_ids,
            "filter": filter_string,
            "max_results": max_results,
            "run_view_type": "ACTIVE_ONLY",
        }
        found = self._call("POST", "/runs/search", body).get("runs", ())
        return [Run.from_json(run) for run in found]

    def log_values(
        self,
        run_id: str,
        *,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        metrics: Sequence[Metric],
    ) -> None:
        """As few ``log-batch`` requests as the server's limits allow, as MlflowClient does:
        at most 100 params, 100 tags and 1000 values in all per request."""
        for param_chunk, tag_chunk, metric_chunk in batch_chunks(
            list(params.items()), list(tags.items()), list(metrics)
        ):
            body = {
                "run_id": run_id,
                "params": _key_values(param_chunk),
                "tags": _key_values(tag_chunk),
                "metrics": [
                    {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                    for m in metric_chunk
                ],
            }
            self._call("POST", "/runs/log-batch", body)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        body = {"run_id": run_id, "status": status, "end_time": now_ms()}
        self._call("POST", "/runs/update", body)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        with self._artifact_lock:
            if self._artifact_client is None:
                if self._make_artifact_client is None:
                    raise RuntimeError(f"No artifact client for {self.tracking_uri}")
                self._artifact_client = self._make_artifact_client()
        self._artifact_client.log_artifact(run_id, local_path, artifact_path)

    # -- experiments ----------------------------------------------------------------------
    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            body = self._call("GET", "/experiments/get-by-name", {"experiment_name": name})
        except RestApiError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        found = body["experiment"]
        return Experiment(found["experiment_id"], found["lifecycle_stage"])

    def create_experiment(self, name: str) -> str:
        return str(self._call("POST", "/experiments/create", {"name": name})["experiment_id"])

    def restore_experiment(self, experiment_id: str) -> None:
        self._call("POST", "/experiments/restore", {"experiment_id": experiment_id})

    # -- transport ------------------------------------------------------------------------
    def _call(self, method: str, endpoint: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        url = f"{self.tracking_uri}{API_PREFIX}{endpoint}"
        session = self._http_session()
        request: dict[str, Any] = {"headers": _request_headers(), "timeout": self._timeout_s}
        if method == "GET":
            request["params"] = payload
        else:
            request["json"] = payload
        try:
            response = session.request(method, url, **request)
        except OSError as exc:  # requests' errors: no connection, timeouts, TLS
            from requests.exceptions import ReadTimeout

            if isinstance(exc, ReadTimeout):
                self._answer_was_late()
            # Worded like the MLflow client's, so errors read the same whichever client sent.
            raise RestConnectionError(f"API request to {url} failed with exception {exc}") from exc
        if response.status_code == 200:
            return response.json() if response.content.strip() else {}
        error = _mlflow_error(response)
        if error is not None:
            raise RestApiError(response.status_code, *error)
        raise RestApiError(
            response.status_code,
            _error_code_for(response.status_code),
            f"API request to endpoint {API_PREFIX}{endpoint} failed with error code "
            f"{response.status_code} != 200. Response body: '{trim(response.text, 500)}'",
        )

    def _answer_was_late(self) -> None:
        """Wait twice as long for the next answers (up to ``MAX_REQUEST_TIMEOUT_S``).

        A server that did not answer in time is still working on the request. Resent with
        the same timeout, every copy joins a queue the first is still in: 64 steps resending
        every 10 s kept a busy PostgreSQL-backed server from ever catching up.
        """
        with self._lock:
            self._timeout_s = max(self._timeout_s, min(self._timeout_s * 2, MAX_REQUEST_TIMEOUT_S))

    def _http_session(self) -> Any:
        """One ``requests.Session`` per process: a forked child must not share the parent's
        kept-alive connections."""
        with self._lock:
            if self._session is None or self._session_pid != os.getpid():
                self._session = _new_session(self.tracking_uri, self._max_retries, self._backoff)
                self._session_pid = os.getpid()
            return self._session


def batch_chunks(
    params: list[tuple[str, str]], tags: list[tuple[str, str]], metrics: list[Metric]
) -> Iterator[tuple[list[tuple[str, str]], list[tuple[str, str]], list[Metric]]]:
    """Split one batch into requests within the server's limits (none when empty)."""
    while params or tags or metrics:
        param_chunk, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        tag_chunk, tags = tags[:MAX_PARAMS_TAGS_PER_BATCH], tags[MAX_PARAMS_TAGS_PER_BATCH:]
        room = MAX_ENTITIES_PER_BATCH - len(param_chunk) - len(tag_chunk)
        metric_chunk, metrics = metrics[:room], metrics[room:]
        yield param_chunk, tag_chunk, metric_chunk


def _new_session(url: str, max_retries: int, backoff_factor: float) -> Any:
    """A session configured from the environment once, here.

    ``requests`` would otherwise re-read proxies and CA bundles from ``os.environ`` on every
    request, in the writer's thread, while the hooks' thread may be changing the environment
    (iterating it then raises ``KeyError``).
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        redirect=max_retries,
        status=max_retries,
        status_forcelist=RETRY_STATUS_CODES,
        backoff_factor=backoff_factor,
        # Reads only: a write that timed out or got a 5xx is retried by the writer, which
        # then knows it came late (and that an old copy may land after a newer value).
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(url)
    session.verify = _tls_verify()
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        session.cert = client_cert
    return session


def _tls_verify() -> bool | str:
    """MLflow's TLS variables first, then the CA bundle variables ``requests`` honours."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    for name in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    return True


def _request_headers() -> dict[str, str]:
    """The installed provider's headers, then MLflow's credential variables over them (as the
    MLflow client does, which is why ``auth`` warns when they are set)."""
    from kedro_vertex_hooks import __version__  # a constant: imports nothing else
    from kedro_vertex_hooks.mlflow_entry_point import installed_provider_object

    headers = {"User-Agent": f"kedro-vertex-hooks/{__version__}"}
    provider = installed_provider_object()
    if provider is not None and provider.in_context():
        headers.update(provider.request_headers())
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if username and password:
        basic = base64.standard_b64encode(f"{username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _mlflow_error(response: Any) -> tuple[str, str] | None:
    """(error_code, message) of MLflow's JSON error body; None for anything else (a proxy's
    HTML page, say)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or "error_code" not in body:
        return None
    return str(body["error_code"]), str(body.get("message", ""))


def _error_code_for(status: int) -> str:
    """MLflow's name for a bare HTTP error status (``mlflow.protos`` ErrorCode)."""
    return {
        400: "BAD_REQUEST",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "ENDPOINT_NOT_FOUND",
        429: "REQUEST_LIMIT_EXCEEDED",
        503: "TEMPORARILY_UNAVAILABLE",
    }.get(status, "INTERNAL_ERROR")


def _key_values(items: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in items]
