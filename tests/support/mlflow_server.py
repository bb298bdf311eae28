"""A real MLflow tracking server on 127.0.0.1, in its own process group: a sqlite store in its
workdir, or the backend store it is given (PostgreSQL, see tests/support/postgres.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server --workers 1`` on a free loopback port; ``stop()`` kills its group."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        python: str | Path | None = None,
        backend_store_uri: str | None = None,
    ) -> None:
        self.python = str(python or sys.executable)  # another venv's MLflow, if given
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        sqlite = f"sqlite:///{(self.workdir / 'mlflow.db').as_posix()}"
        self.db_uri = backend_store_uri or sqlite
        self.artifacts = self.workdir / "artifacts"
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> MlflowServer:
        """Start and wait for /health; a new PostgreSQL store needs ~25 s for its schema."""
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 (lives with the process)
        # MLflow 3 also starts background job workers (GenAI scorers, ~235 MB each); tracking
        # does not use them, and a 2-core machine running a dozen servers feels them.
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self._process = subprocess.Popen(
            [
                self.python,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                self.db_uri,
                "--artifacts-destination",
                self.artifacts.as_posix(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_tail = (self.workdir / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server exited early: {log_tail}")
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not healthy after {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left of it (its job consumers)."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=15)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()
