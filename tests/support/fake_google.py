"""Fake Google endpoints on 127.0.0.1 that issue real RS256-signed ID tokens.

One HTTP server plays three Google services, enough for google-auth to run its real code:
- the GCE metadata server (ping, service-account info, access token, identity endpoint),
  reached by google-auth through ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP``;
- the OAuth 2.0 token endpoint (``token_uri`` of a service-account key file written by
  ``write_key_file``): JWT-bearer grants for access tokens and ID tokens;
- IAM Credentials ``generateIdToken`` (``iam_endpoint`` option of the IAM provider).

ID tokens live ``token_lifetime_s`` seconds (changeable at any time). ``fail_next`` makes the
next token requests fail, ``delay_s`` slows them down, and ``counts`` says how many ID tokens
each endpoint issued, so tests can see caching, refresh and stampedes from the outside;
``issued_tokens`` holds them in order with the time each was served, so a test can read the
``iat``/``exp`` a client was given and see when it asked. ``clock_offset_s`` puts the
fake's clock ahead of ours (or behind it, negative), as a skewed clock would, and
``omit_claims`` leaves claims (e.g. ``exp``) out of new ID tokens.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.loopback import serve, shut

ISSUER = "https://accounts.google.com"
DEFAULT_SERVICE_ACCOUNT = "runner@fake-project.iam.gserviceaccount.com"
IAM_PATH_PREFIX = "/v1/projects/-/serviceAccounts/"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(private_key: rsa.RSAPrivateKey, kid: str, claims: dict) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def verify_jwt(public_key: rsa.RSAPublicKey, token: str) -> dict:
    """The claims of an RS256 JWT; raises ValueError when it is malformed or badly signed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise ValueError(f"undecodable JWT ({exc})") from None
    if header.get("alg") != "RS256":
        raise ValueError(f"alg {header.get('alg')!r} is not RS256")
    try:
        public_key.verify(
            signature, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise ValueError("bad signature") from None
    return claims


@dataclass(frozen=True)
class IssuedToken:
    """An ID token an endpoint served, and when its request arrived (our clock): the client
    asked no later than ``at``."""

    endpoint: str
    value: str
    at: float


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeGoogle:
    """Start with ``FakeGoogle().start()``; ``.url``, ``.host`` (for env vars), ``.stop()``."""

    def __init__(
        self, token_lifetime_s: float = 3600, service_account: str = DEFAULT_SERVICE_ACCOUNT
    ):
        self.token_lifetime_s = token_lifetime_s
        self.service_account = service_account
        self.project_id = "fake-project"
        self.signing_key = _new_key()
        self.kid = uuid.uuid4().hex
        self.public_key = self.signing_key.public_key()
        self.delay_s = 0.0
        self.counts: Counter[str] = Counter()  # ID tokens issued per endpoint
        self.issued_tokens: list[IssuedToken] = []  # served to clients, oldest first
        self.clock_offset_s = 0.0  # the fake Google clock minus ours: moves iat and exp
        self.omit_claims: set[str] = set()  # claims left out of the ID tokens it mints
        self.failures: Counter[str] = Counter()  # token requests answered with an error
        self._fail_next = 0
        self._fail_status = 403
        self._access_tokens: dict[str, str] = {}  # access token -> the account it is for
        self._key_files: dict[str, rsa.RSAPublicKey] = {}  # private_key_id -> public key
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FakeGoogle:
        fake = self

        class Handler(_Handler):
            google = fake

        self._server = serve(Handler)
        return self

    def stop(self) -> None:
        shut(self._server)
        self._server = None

    @property
    def host(self) -> str:
        assert self._server is not None, "start() first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def iam_endpoint(self) -> str:
        """URL template for the IAM provider's ``iam_endpoint`` option."""
        return self.url + IAM_PATH_PREFIX + "{service_account}:generateIdToken"

    def metadata_env(self) -> dict[str, str]:
        """Environment that points google-auth's metadata client at this server."""
        return {"GCE_METADATA_HOST": self.host, "GCE_METADATA_IP": self.host}

    # -- knobs -----------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 403) -> None:
        """Answer the next ``count`` ID-token requests (any endpoint) with ``status``."""
        with self._lock:
            self._fail_next = count
            self._fail_status = status

    @property
    def issued(self) -> int:
        return sum(self.counts.values())

    def write_key_file(self, path: Path, email: str | None = None) -> Path:
        """A service-account key file whose ``token_uri`` is this server."""
        key = _new_key()
        key_id = uuid.uuid4().hex
        self._key_files[key_id] = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email or self.service_account,
            "client_id": "1000000000000000000001",
            "token_uri": self.url + "/token",
        }
        path.write_text(json.dumps(info))
        return path

    # -- token minting ---------------------------------------------------------------------
    def mint_id_token(
        self, audience: str, email: str | None, lifetime_s: float | None = None
    ) -> str:
        now = int(time.time() + self.clock_offset_s)
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "azp": email or "fake-client",
            "sub": str(abs(hash(email or "anonymous"))),
            "iat": now,
            "exp": now + int(lifetime_s if lifetime_s is not None else self.token_lifetime_s),
            "jti": secrets.token_hex(8),
        }
        if email:
            claims["email"] = email
            claims["email_verified"] = True
        for name in self.omit_claims:
            claims.pop(name, None)
        return sign_jwt(self.signing_key, self.kid, claims)

    def _served(self, kind: str, token: str, at: float) -> None:
        """Count an ID token an endpoint of ``kind`` answered with, and keep it."""
        with self._lock:
            self.counts[kind] += 1
            self.issued_tokens.append(IssuedToken(kind, token, at))

    def _issue_access_token(self, account: str) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._access_tokens[token] = account
        return token

    def _should_fail(self) -> int | None:
        with self._lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                return self._fail_status
        return None


class _Handler(BaseHTTPRequestHandler):
    google: FakeGoogle
    protocol_version = "HTTP/1.1"
    received_at = 0.0  # when the request being handled arrived

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: str | bytes, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload))

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token_request_gate(self, kind: str) -> bool:
        """Apply ``delay_s`` and ``fail_next``; False when it answered with an error."""
        if self.google.delay_s:
            time.sleep(self.google.delay_s)
        status = self.google._should_fail()
        if status is not None:
            self.google.failures[kind] += 1
            self._json(
                status,
                {
                    "error": {
                        "code": status,
                        "message": "Permission iam.serviceAccounts.getOpenIdToken denied",
                    }
                },
            )
            return False
        return True

    # -- metadata server -------------------------------------------------------------------
    def do_GET(self) -> None:
        self.received_at = time.time()
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/":
            self._send(200, "", "application/text")
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, "Missing Metadata-Flavor: Google header", "text/plain")
            return
        base = "/computeMetadata/v1/"
        path = url.path[len(base) :] if url.path.startswith(base) else None
        account_prefix = "instance/service-accounts/default/"
        if path == "project/project-id":
            self._send(200, self.google.project_id, "application/text")
        elif path == "universe/universe-domain":
            self._send(200, "googleapis.com", "application/text")
        elif path == account_prefix:
            info = {
                "email": self.google.service_account,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "aliases": ["default"],
            }
            self._json(200, info)
        elif path == account_prefix + "email":
            self._send(200, self.google.service_account, "application/text")
        elif path == account_prefix + "token":
            token = self.google._issue_access_token(self.google.service_account)
            self._json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        elif path == account_prefix + "identity":
            self._identity(query)
        else:
            self._send(404, "not found", "text/plain")

    def _identity(self, query: dict[str, str]) -> None:
        if "audience" not in query:
            self._send(400, "audience required", "text/plain")
            return
        if not self._token_request_gate("identity"):
            return
        email = self.google.service_account if query.get("format") == "full" else None
        token = self.google.mint_id_token(query["audience"], email)
        self.google._served("identity", token, self.received_at)
        self._send(200, token, "application/text")

    # -- OAuth token endpoint and IAM Credentials ---------------------------------------------
    def do_POST(self) -> None:
        self.received_at = time.time()
        url = urlparse(self.path)
        body = self._body()
        if url.path == "/token":
            self._oauth_token(body)
        elif url.path.startswith(IAM_PATH_PREFIX) and url.path.endswith(":generateIdToken"):
            account = unquote(url.path[len(IAM_PATH_PREFIX) : -len(":generateIdToken")])
            self._generate_id_token(account, body)
        elif url.path.startswith("/computeMetadata/v1/instance/service-accounts/default/identity"):
            self._identity({key: values[0] for key, values in parse_qs(url.query).items()})
        else:
            self._send(404, "not found", "text/plain")

    def _oauth_token(self, body: bytes) -> None:
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            self._json(400, {"error": "unsupported_grant_type"})
            return
        assertion = form.get("assertion", "")
        try:
            header = json.loads(b64url_decode(assertion.split(".")[0]))
            claims = verify_jwt(self.google._key_files[header["kid"]], assertion)
        except (KeyError, ValueError, IndexError) as exc:
            self._json(400, {"error": "invalid_grant", "error_description": str(exc)})
            return
        account = claims.get("iss", "")
        if "target_audience" in claims:
            if not self._token_request_gate("token"):
                return
            token = self.google.mint_id_token(claims["target_audience"], account)
            self.google._served("token", token, self.received_at)
            self._json(200, {"id_token": token})
        else:
            access = self.google._issue_access_token(account)
            self._json(200, {"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    def _generate_id_token(self, account: str, body: bytes) -> None:
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if bearer not in self.google._access_tokens:
            self._json(401, {"error": {"code": 401, "message": "Request had invalid credentials"}})
            return
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self._json(400, {"error": {"code": 400, "message": "invalid JSON"}})
            return
        if not request.get("audience"):
            self._json(400, {"error": {"code": 400, "message": "audience is required"}})
            return
        if not self._token_request_gate("iam"):
            return
        email = account if request.get("includeEmail") else None
        token = self.google.mint_id_token(request["audience"], email)
        self.google._served("iam", token, self.received_at)
        self._json(200, {"token": token})
