"""An Identity-Aware-Proxy-like gate on 127.0.0.1 in front of a real MLflow server.

A request is forwarded only when ``Authorization`` and ``Proxy-Authorization`` together carry
exactly one bearer token that is an RS256 JWT signed by the fake Google key, unexpired, for
the expected audience and with an email claim. Anything else gets IAP's answer: 401 with an
HTML sign-in page. Bodies are streamed both ways (artifact upload and download work), and
every decision is counted; ``rejections`` says why each rejected request was refused.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fake_google import ISSUER, verify_jwt
from tests.support.loopback import serve, shut

CHUNK = 64 * 1024
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
LOGIN_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Google Accounts</title></head>
<body><div id="initialView"><h1>Sign in</h1><p>to continue to MLflow</p>
<form action="https://accounts.google.com/ServiceLogin"><input type="email" name="identifier">
<button type="submit">Next</button></form></div></body></html>
"""


@dataclass(frozen=True)
class Rejection:
    method: str
    path: str
    reason: str


class IapProxy:
    """``IapProxy(upstream_url, audience, public_key).start()``; ``.url``, ``.stop()``."""

    def __init__(self, upstream_url: str, audience: str, public_key: rsa.RSAPublicKey) -> None:
        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.audience = audience
        self.public_key = public_key
        self.accepted = 0
        self.rejections: list[Rejection] = []
        self.tokens_seen: set[str] = set()  # distinct accepted tokens: shows refreshes happened
        self.accepted_calls: Counter[tuple[str, str]] = Counter()  # (client, path) -> count
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def reset(self) -> None:
        with self._lock:
            self.accepted = 0
            self.rejections = []
            self.tokens_seen = set()
            self.accepted_calls = Counter()

    def start(self) -> IapProxy:
        proxy = self

        class Handler(_ProxyHandler):
            gate = proxy

        self._server = serve(Handler)
        return self

    def stop(self) -> None:
        shut(self._server)
        self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def check(self, credentials: list[str]) -> tuple[str | None, str | None]:
        """(token, None) when the header values carry one acceptable token, else (None, why)."""
        pairs = []
        for value in credentials:
            words = value.split()
            if len(words) % 2:
                return None, f"malformed credential header ({len(words)} words)"
            pairs.extend(zip(words[::2], words[1::2], strict=True))
        if not pairs:
            return None, "no credentials"
        if len(pairs) > 1:
            return None, f"{len(pairs)} credentials in one request"
        scheme, token = pairs[0]
        if scheme.lower() != "bearer":
            return None, f"scheme {scheme!r} is not Bearer"
        try:
            claims = verify_jwt(self.public_key, token)
        except ValueError as exc:
            return None, f"invalid token: {exc}"
        now = time.time()
        if claims.get("iss") != ISSUER:
            return None, f"issuer {claims.get('iss')!r} is not {ISSUER!r}"
        if claims.get("aud") != self.audience:
            return None, f"audience {claims.get('aud')!r} is not {self.audience!r}"
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= now:
            return None, f"expired {now - float(claims.get('exp') or 0):.2f} s ago"
        if not claims.get("email"):
            return None, "no email claim (IAP needs includeEmail)"
        return token, None

    def _record(
        self, method: str, path: str, token: str | None, reason: str | None, client: str = ""
    ) -> None:
        with self._lock:
            if token is not None:
                self.accepted += 1
                self.tokens_seen.add(token)
                self.accepted_calls[(client, path.split("?")[0])] += 1
            else:
                self.rejections.append(Rejection(method, path, reason or "?"))


class _ProxyHandler(BaseHTTPRequestHandler):
    gate: IapProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle(self) -> None:
        credentials = [
            *(self.headers.get_all("Authorization") or []),
            *(self.headers.get_all("Proxy-Authorization") or []),
        ]
        token, reason = self.gate.check(credentials)
        client = self.headers.get("User-Agent", "").split("/")[0]  # e.g. mlflow-python-client
        self.gate._record(self.command, self.path, token, reason, client)
        if token is None:
            self._refuse()
        else:
            self._forward()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _refuse(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True  # not worth parsing a body we refuse
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                remaining -= len(self.rfile.read(min(CHUNK, remaining)))
        self.send_response(401)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(LOGIN_PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(LOGIN_PAGE)

    def _forward(self) -> None:
        # A fresh upstream connection per request: an idle kept-alive one may have been closed
        # by the server, and a streamed request body cannot be replayed on a new one.
        upstream = http.client.HTTPConnection(*self.gate.upstream, timeout=300)
        try:
            upstream.connect()
            upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._exchange(upstream)
        finally:
            upstream.close()

    def _exchange(self, upstream: http.client.HTTPConnection) -> None:
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        if chunked:
            self._copy_chunked_request(upstream)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    break
                upstream.send(data)
                remaining -= len(data)
        response = upstream.getresponse()
        self.send_response(response.status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        bodyless = self.command == "HEAD" or response.status in (204, 304)
        if length is None and not bodyless:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while not bodyless:
            data = response.read(CHUNK) if length is not None else response.read1(CHUNK)
            if not data:
                break
            self.wfile.write(data if length is not None else b"%x\r\n%s\r\n" % (len(data), data))
        if length is None and not bodyless:
            self.wfile.write(b"0\r\n\r\n")
        response.close()

    def _copy_chunked_request(self, upstream: http.client.HTTPConnection) -> None:
        while True:
            size_line = self.rfile.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                upstream.send(b"0\r\n\r\n")
                return
            data = self.rfile.read(size)
            self.rfile.readline()  # CRLF after the chunk
            upstream.send(b"%x\r\n%s\r\n" % (size, data))
