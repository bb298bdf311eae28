"""A loopback HTTP reverse proxy in front of a real MLflow server: latency, counters, faults.

Tests and the benchmark put it between the MLflow client and ``mlflow server`` to make the
server look remote (a fixed delay per request, like a server behind IAP), to count what a
process sends (requests and bytes, per endpoint), and to inject outages at run time: refused
or reset connections, 5xx answers, responses cut in the middle, extra latency. A hold
(:meth:`MlflowProxy.hold`) keeps matching requests, or the server's answers to them, until N
have arrived, then lets them all through together: a race between processes made to happen,
the same way, on every run.

Standard library only, 127.0.0.1 only. Keep-alive (HTTP/1.1) on both sides, bodies streamed
in both directions (artifact uploads and downloads), TCP_NODELAY on every socket (without it
delayed ACKs add about 40 ms to requests on reused connections).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

_CHUNK_SIZE = 64 * 1024
# Headers that belong to one hop; ``host`` is rewritten to the upstream's.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
)
_UPSTREAM_TIMEOUT_S = 300.0

FaultKind = Literal["status", "cut", "reset", "delay"]
# Where a hold waits: before forwarding the request, or after the server answered it.
HoldStage = Literal["request", "answer"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the proxy saw it; ``fault`` names the injected fault, if any."""

    endpoint: str  # "POST /api/2.0/mlflow/runs/log-batch"
    status: int | None  # None when the connection was reset or cut before a status line
    bytes_from_client: int
    bytes_to_client: int
    fault: FaultKind | None
    started: float  # time.monotonic()
    seconds: float  # from the request head to the last byte answered, latency included
    authorization: str | None = None  # the request's Authorization header, as sent


@dataclass(frozen=True)
class TrafficStats:
    """Counters since the last reset: requests, new connections and bytes on the client side."""

    requests: int = 0
    connections: int = 0
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    faults: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    records: tuple[RequestRecord, ...] = ()

    @property
    def bytes_total(self) -> int:
        return self.bytes_from_client + self.bytes_to_client


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int | None  # requests left to hit; None: no count limit
    until: float | None  # time.monotonic() deadline; None: no time limit
    path_contains: str | None
    status: int = 503
    delay_s: float = 0.0

    def expired(self, now: float) -> bool:
        used_up = self.remaining is not None and self.remaining <= 0
        return used_up or (self.until is not None and now >= self.until)

    def matches(self, endpoint: str, now: float) -> bool:
        if self.expired(now):
            return False
        return self.path_contains is None or self.path_contains in endpoint


class Hold:
    """A barrier for the first ``until`` requests matching ``path_contains``.

    At ``stage`` ``"request"`` each waits before being forwarded, at ``"answer"`` after the
    server answered it (the work is done, the client not told yet). Each waits until
    ``until`` have arrived, then all go on together; after ``timeout_s`` from the first
    arrival they go on anyway and ``timed_out`` says so (a test asserts it did not: the
    order it forced then really happened). Requests arriving once it opened pass unheld.
    """

    def __init__(self, path_contains: str, until: int, timeout_s: float, stage: HoldStage) -> None:
        self.path_contains = path_contains
        self.until = until
        self.timeout_s = timeout_s
        self.stage = stage
        self.arrived = 0  # requests held so far (all of them, once opened)
        self.released = 0  # held requests that went on
        self.timed_out = False
        self.open = False
        self.deadline: float | None = None  # time.monotonic(), set by the first arrival

    def matches(self, endpoint: str, stage: HoldStage) -> bool:
        return not self.open and self.stage == stage and self.path_contains in endpoint


class _Counting:
    """Wraps a socket file and counts the bytes read or written through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.count = 0

    def readline(self, limit: int = -1) -> bytes:
        line = self._raw.readline(limit)
        self.count += len(line)
        return line

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: MlflowProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish and injected resets are normal here: no traceback on stderr."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    rfile: Any
    wfile: Any

    def setup(self) -> None:
        super().setup()
        self.rfile = _Counting(self.rfile)
        self.wfile = _Counting(self.wfile)
        self._upstream: http.client.HTTPConnection | None = None
        self._record: dict[str, Any] | None = None
        self._answering = False
        self.server.proxy._connection_opened(self.connection)

    def finish(self) -> None:
        self.server.proxy._connection_closed(self.connection)
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the counters and records say what happened."""

    def handle_one_request(self) -> None:
        read_before, written_before = self.rfile.count, self.wfile.count
        self._record = None
        try:
            super().handle_one_request()
        except (OSError, http.client.HTTPException):
            self.close_connection = True
        finally:
            if self._record is not None:
                self.server.proxy._request_done(
                    RequestRecord(
                        endpoint=self._record["endpoint"],
                        status=self._record["status"],
                        bytes_from_client=self.rfile.count - read_before,
                        bytes_to_client=self.wfile.count - written_before,
                        fault=self._record["fault"],
                        started=self._record["started"],
                        seconds=time.monotonic() - self._record["started"],
                        authorization=self._record["authorization"],
                    ),
                    answered=self._answering,
                )
            self._answering = False

    def _proxy_request(self) -> None:
        proxy = self.server.proxy
        endpoint = f"{self.command} {urlsplit(self.path).path}"
        fault = proxy._request_started(endpoint)
        self._record = {
            "endpoint": endpoint,
            "status": None,
            "fault": fault.kind if fault else None,
            "started": time.monotonic(),
            "authorization": self.headers.get("Authorization"),
        }
        if fault and fault.kind == "reset":
            self._reset()
            return
        proxy._wait_at_hold(endpoint, "request")
        delay = proxy.latency_s + (fault.delay_s if fault and fault.kind == "delay" else 0.0)
        if delay > 0:
            time.sleep(delay)
        if fault and fault.kind == "status":
            for _ in self._body_chunks():
                pass
            self._answer_error(fault.status, "injected by the test proxy")
            return
        try:
            response = self._forward()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_upstream()
            self.close_connection = True  # the request body may be half read
            self._answer_error(502, f"upstream unreachable: {type(exc).__name__}")
            return
        proxy._wait_at_hold(endpoint, "answer")
        if fault and fault.kind == "cut":
            self._relay_cut(response)
        else:
            self._relay(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy_request

    # -- upstream ---------------------------------------------------------------------------
    def _upstream_connection(self) -> http.client.HTTPConnection:
        """The connection's own keep-alive upstream connection, replaced if the server closed it."""
        conn = self._upstream
        if conn is not None and conn.sock is not None:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if readable:  # idle keep-alive socket readable means closed by the server
                self._drop_upstream()
                conn = None
        if conn is None or conn.sock is None:
            host, port = self.server.proxy.upstream_address
            conn = http.client.HTTPConnection(host, port, timeout=_UPSTREAM_TIMEOUT_S)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream = conn
        return conn

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _forward(self) -> http.client.HTTPResponse:
        conn = self._upstream_connection()
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.server.proxy.upstream_netloc)
        for name, value in self.headers.items():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "host":
                conn.putheader(name, value)
        conn.endheaders()
        for chunk in self._body_chunks():
            conn.send(chunk)
        return conn.getresponse()

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives, chunked framing kept as is."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                yield size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.rfile.readline(65537)
                        yield line
                        if line in (b"\r\n", b"\n", b""):
                            return
                yield from self._read_exactly(size + 2)  # data and its CRLF
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            data = self.rfile.read(min(remaining, _CHUNK_SIZE))
            if not data:
                raise ConnectionResetError("client closed the connection mid-body")
            remaining -= len(data)
            yield data

    # -- answers ----------------------------------------------------------------------------
    def _response_headers(self, response: http.client.HTTPResponse) -> list[tuple[str, str]]:
        return [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]

    def _begin_answer(self) -> None:
        """From here the client may see an answer (or a reset): the counters wait for this
        request's record, so that a client's count and the proxy's agree."""
        if not self._answering:
            self._answering = True
            self.server.proxy._answer_started()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Stream the upstream response to the client with the same framing."""
        self._begin_answer()
        bodyless = self.command == "HEAD" or response.status in (204, 304)
        until_close = not bodyless and not response.chunked and response.length is None
        self._record["status"] = response.status  # type: ignore[index]
        self.send_response_only(response.status, response.reason)
        for name, value in self._response_headers(response):
            self.send_header(name, value)
        if until_close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not bodyless:
            while data := response.read1(_CHUNK_SIZE):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if response.chunked else data)
            if response.chunked:
                self.wfile.write(b"0\r\n\r\n")
        response.close()
        if response.will_close:
            self._drop_upstream()

    def _relay_cut(self, response: http.client.HTTPResponse) -> None:
        """Send the first half of the response (the server did the work), then reset."""
        self._begin_answer()
        body = response.read()
        response.close()
        if response.will_close:
            self._drop_upstream()
        headers = [
            (k, v)
            for k, v in self._response_headers(response)
            if k.lower() not in ("transfer-encoding", "content-length")
        ]
        head = f"HTTP/1.1 {response.status} {response.reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        head += f"Content-Length: {len(body)}\r\n\r\n"
        wire = head.encode("latin-1") + body
        half = len(head) + len(body) // 2 if body else len(head) // 2
        self.wfile.write(wire[:half])
        self._reset()

    def _answer_error(self, status: int, message: str) -> None:
        self._begin_answer()
        body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": message}).encode()
        self._record["status"] = status  # type: ignore[index]
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the client connection with a TCP reset (linger 0, then a real close)."""
        self._begin_answer()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()


class MlflowProxy:
    """Reverse proxy on 127.0.0.1 in front of ``upstream_uri``, controllable while it runs.

    ``latency_s`` (default 25 ms) is slept once per request before forwarding it, like one
    network round trip to a remote server. Fault methods take ``count`` (the next N matching
    requests) and/or ``seconds`` (for that long); with neither, the fault lasts until
    :meth:`clear_faults`. ``path_contains`` limits a fault to matching endpoints
    (``"POST /api/2.0/mlflow/runs/log-batch"``).
    """

    def __init__(
        self,
        upstream_uri: str,
        latency_s: float = 0.025,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(upstream_uri)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:<port>, got {upstream_uri!r}")
        self.upstream_address = (parts.hostname, parts.port)
        self.upstream_netloc = parts.netloc
        self.latency_s = latency_s
        self.port = port
        self.tls = tls  # serve https with this server context
        self._lock = threading.Condition()
        self._faults: list[_Fault] = []
        self._holds: list[Hold] = []
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._answering = 0  # requests answered (or reset) but not yet counted
        self._stats = _MutableStats()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._up_timer: threading.Timer | None = None

    @property
    def uri(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> MlflowProxy:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"mlflow-proxy-{self.port}",
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None
        self.release_holds()
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> MlflowProxy:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults -----------------------------------------------------------------------------
    def down(self, seconds: float | None = None) -> None:
        """Server away: open connections dropped, new ones refused; back after ``seconds``."""
        if self._up_timer is not None:
            self._up_timer.cancel()
        self._close_listener()
        self._drop_connections()
        if seconds is not None:
            self._up_timer = threading.Timer(seconds, self.up)
            self._up_timer.daemon = True
            self._up_timer.start()

    def up(self) -> None:
        """Accept connections again on the same port (after :meth:`down`)."""
        if self._server is None:
            self.start()

    def fail(
        self,
        status: int = 503,
        count: int | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer ``status`` instead of forwarding (the server never sees the request)."""
        self._add_fault("status", count, seconds, path_contains, status=status)

    def cut(
        self,
        count: int | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Forward (the server does the work), send half the response, then reset."""
        self._add_fault("cut", count, seconds, path_contains)

    def reset(
        self,
        count: int | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Reset the connection as soon as the request head arrives (never forwarded)."""
        self._add_fault("reset", count, seconds, path_contains)

    def slow(
        self,
        extra_s: float,
        count: int | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Add ``extra_s`` to the latency of matching requests."""
        self._add_fault("delay", count, seconds, path_contains, delay_s=extra_s)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add_fault(
        self,
        kind: FaultKind,
        count: int | None,
        seconds: float | None,
        path_contains: str | None,
        **details: Any,
    ) -> None:
        until = time.monotonic() + seconds if seconds is not None else None
        with self._lock:
            self._faults.append(_Fault(kind, count, until, path_contains, **details))

    # -- holds ----------------------------------------------------------------------------
    def hold(
        self,
        path_contains: str,
        until: int,
        timeout_s: float = 60.0,
        stage: HoldStage = "request",
    ) -> Hold:
        """Hold the next ``until`` requests matching ``path_contains`` until all have arrived.

        Holding every racing process's ``runs/create`` until each has sent one means each
        searched before any run existed: every process then creates a run. Holding the
        answers too (``stage="answer"``) means no process hears its run exists before all
        do. The returned :class:`Hold` counts what it held and released.
        """
        if until < 1:
            raise ValueError(f"until must be at least 1, got {until}")
        barrier = Hold(path_contains, until, timeout_s, stage)
        with self._lock:
            self._holds.append(barrier)
        return barrier

    def release_holds(self) -> None:
        """Let every held request go on now (as :meth:`stop` does)."""
        with self._lock:
            for barrier in self._holds:
                barrier.open = True
            self._holds.clear()
            self._lock.notify_all()

    # -- counters ---------------------------------------------------------------------------
    def stats(self) -> TrafficStats:
        """The counters so far, every request a client has had its answer to included (a
        request is counted once its answer is sent; this waits for those being sent)."""
        with self._lock:
            self._wait_answers_counted()
            return self._stats.snapshot()

    def reset_stats(self) -> TrafficStats:
        """Return the counters and start new ones, atomically."""
        with self._lock:
            self._wait_answers_counted()
            snapshot = self._stats.snapshot()
            self._stats = _MutableStats()
            return snapshot

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until no request is in flight, so counters include every answered request."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout_s)

    def _wait_answers_counted(self, timeout_s: float = 10.0) -> None:
        """(Lock held.) Held or slowed requests are not waited for: they have no answer yet."""
        self._lock.wait_for(lambda: self._answering == 0, timeout_s)

    # -- called by the handler threads --------------------------------------------------------
    def _answer_started(self) -> None:
        with self._lock:
            self._answering += 1

    def _request_started(self, endpoint: str) -> _Fault | None:
        now = time.monotonic()
        with self._lock:
            self._in_flight += 1
            self._faults = [f for f in self._faults if not f.expired(now)]
            for fault in self._faults:
                if fault.matches(endpoint, now):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def _wait_at_hold(self, endpoint: str, stage: HoldStage) -> None:
        """Block this request at the first hold still gathering that it matches, if any."""
        with self._lock:
            barrier = next((h for h in self._holds if h.matches(endpoint, stage)), None)
            if barrier is None:
                return
            barrier.arrived += 1
            if barrier.deadline is None:
                barrier.deadline = time.monotonic() + barrier.timeout_s
            if barrier.arrived >= barrier.until:
                barrier.open = True
                self._holds.remove(barrier)
                self._lock.notify_all()
            remaining = barrier.deadline - time.monotonic()
            if not self._lock.wait_for(lambda: barrier.open, max(0.0, remaining)):
                barrier.timed_out = barrier.open = True  # released anyway
                if barrier in self._holds:
                    self._holds.remove(barrier)
            barrier.released += 1
            self._lock.notify_all()

    def _request_done(self, record: RequestRecord, answered: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            self._answering -= answered
            self._stats.add(record)
            self._lock.notify_all()

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)
            self._stats.connections += 1

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _drop_connections(self) -> None:
        """Wake every handler thread with a shutdown; their close then sends a reset."""
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class _MutableStats:
    requests: int = 0
    connections: int = 0
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    faults: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    records: list[RequestRecord] = field(default_factory=list)

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        self.bytes_from_client += record.bytes_from_client
        self.bytes_to_client += record.bytes_to_client
        self.faults += record.fault is not None
        self.by_endpoint[record.endpoint] += 1
        self.records.append(record)

    def snapshot(self) -> TrafficStats:
        return TrafficStats(
            requests=self.requests,
            connections=self.connections,
            bytes_from_client=self.bytes_from_client,
            bytes_to_client=self.bytes_to_client,
            faults=self.faults,
            by_endpoint=dict(self.by_endpoint),
            records=tuple(self.records),
        )
