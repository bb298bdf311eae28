"""Fake Google + IAP-like proxy in front of the session's real MLflow server, for auth tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.fake_google import FakeGoogle
from tests.support.iap_proxy import IapProxy

AUDIENCE = "1234-iap.apps.googleusercontent.com"
THIRD_PARTY_SOURCE = Path(__file__).parent / "third_party_provider"


@dataclass
class AuthStack:
    google: FakeGoogle
    proxy: IapProxy

    @classmethod
    def start(cls, mlflow_uri: str, token_lifetime_s: float = 3600) -> AuthStack:
        google = FakeGoogle(token_lifetime_s=token_lifetime_s).start()
        return cls(google, IapProxy(mlflow_uri, AUDIENCE, google.public_key).start())

    def stop(self) -> None:
        self.proxy.stop()
        self.google.stop()

    @classmethod
    def serve(cls, mlflow_uri: str) -> Iterator[AuthStack]:
        """Generator body for a module-scoped fixture."""
        started = cls.start(mlflow_uri)
        yield started
        started.stop()

    def reset(self, token_lifetime_s: float = 3600) -> None:
        """Fresh counters and settings between tests sharing the stack."""
        self.proxy.reset()
        self.google.counts.clear()
        self.google.issued_tokens.clear()
        self.google.clock_offset_s = 0.0
        self.google.omit_claims.clear()
        self.google.failures.clear()
        self.google.fail_next(0)
        self.google.delay_s = 0.0
        self.google.token_lifetime_s = token_lifetime_s


def google_free_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A process environment with no real Google credentials and telemetry off."""
    gcloud = tmp_path / "gcloud-config"
    gcloud.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "GCE_METADATA", "GOOGLE_"))
    }
    env.update(
        CLOUDSDK_CONFIG=str(gcloud),
        KEDRO_DISABLE_TELEMETRY="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run_python(
    code: str, env: dict[str, str], *args: str, timeout: float = 120, python: str | Path = ""
):
    """Run ``python -c code`` the way a pipeline container would: a fresh interpreter (this
    one's, or ``python``)."""
    return subprocess.run(
        [str(python or sys.executable), "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def install_third_party_provider(target: Path) -> Path:
    """``pip install`` the acme-mlflow-auth test distribution into ``target`` (not the venv).

    Adding ``target`` to ``sys.path`` / ``PYTHONPATH`` makes its entry point visible to
    ``importlib.metadata`` exactly as an installed package's would be.
    """
    source = target.parent / "acme-source"
    shutil.copytree(THIRD_PARTY_SOURCE, source)  # setuptools writes build files in the tree
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def restore_provider_registry() -> Iterator[None]:
    """Generator body for fixtures: undo MLflow-registry and installation changes of a test."""
    from mlflow.tracking.request_header import registry

    from kedro_vertex_hooks.auth import install_header_provider
    from kedro_vertex_hooks.config import RequestHeaderProviderConfig

    providers = registry._request_header_provider_registry._registry
    before = list(list.__iter__(providers))
    yield
    install_header_provider(RequestHeaderProviderConfig())  # removes ours
    current = registry._request_header_provider_registry._registry
    current[:] = before
