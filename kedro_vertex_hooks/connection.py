"""Which client node steps and commands talk through, and what it needs before the first call.

An http(s) server is spoken to over REST without importing MLflow (which costs a step
0.6-1 s); ``MlflowRunHooks(use_mlflow_client=True)`` and what only MLflow's client can do (a
local store, an auth plugin, artifacts, the CLI's listing and downloading) get
``MlflowClient``. Before the first call: MLflow's HTTP waits bounded, the tracking URI exported,
the request header provider installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Any

from kedro_vertex_hooks.config import ConfigError, HookOptions, ProjectConfig
from kedro_vertex_hooks.rest_client import RestTrackingClient, rest_client_unsuitable

if TYPE_CHECKING:
    from kedro_vertex_hooks.mlflow_client import MlflowTrackingClient
    from kedro_vertex_hooks.tracking_client import TrackingClient
    from kedro_vertex_hooks.worker_spec import SessionSpec

logger = logging.getLogger(__name__)


def apply_http_defaults(options: HookOptions) -> None:
    """Make MLflow's HTTP timeouts and retries fit a node step, unless the user set them.

    MLflow's defaults (7 retries, 120 s timeout, backoff 2) can block one call for minutes;
    this package retries through outages itself, within ``outage_budget_s``.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(options.http_timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(options.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # set_terminated would otherwise read the run once more only to print its URL.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def connect(
    config: ProjectConfig | SessionSpec, options: HookOptions, kedro_context: Any = None
) -> TrackingClient:
    """The node steps' client for the project's tracking URI, with its auth provider installed.

    An http(s) server is spoken to over REST without importing MLflow (which costs a step
    0.6-1 s); ``MlflowRunHooks(use_mlflow_client=True)`` and what only MLflow's client can do
    (a local store, an auth plugin) get ``MlflowClient``.
    """
    _prepare_connection(config, options, kedro_context)
    uri = config.tracking_uri
    why_mlflow = why_mlflow_client(uri, options)
    if why_mlflow is None:
        return RestTrackingClient(uri, artifact_client=lambda: _mlflow_client(uri))
    logger.debug("Tracking through MlflowClient: %s", why_mlflow)
    return _mlflow_client(uri)


def why_mlflow_client(tracking_uri: str, options: HookOptions) -> str | None:
    """Why node steps use ``MlflowClient`` for ``tracking_uri``; None when they talk REST."""
    if options.use_mlflow_client:
        return "MlflowRunHooks(use_mlflow_client=True)"
    return rest_client_unsuitable(tracking_uri)


def connect_mlflow(
    config: ProjectConfig, options: HookOptions, kedro_context: Any = None
) -> MlflowTrackingClient:
    """An ``MlflowClient`` for the CLI's commands, which also list and download artifacts."""
    _prepare_connection(config, options, kedro_context)
    return _mlflow_client(config.tracking_uri)


def _mlflow_client(tracking_uri: str) -> MlflowTrackingClient:
    from kedro_vertex_hooks.mlflow_client import mlflow_tracking_client

    return mlflow_tracking_client(tracking_uri)


def _prepare_connection(
    config: ProjectConfig | SessionSpec, options: HookOptions, kedro_context: Any
) -> None:
    """Check the URI can be served here, bound MLflow's HTTP waits, install the provider.

    The URI is exported (``MLFLOW_TRACKING_URI``) for worker processes, kedro-mlflow's
    datasets and user code.
    """
    uri = config.tracking_uri
    if uri.startswith("sqlite:") and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError(
            f"The tracking URI {uri} is a local sqlite store, which needs the full 'mlflow' "
            "package; this image has only the MLflow client. Set server.mlflow_tracking_uri "
            "in conf/<env>/mlflow.yml (or MLFLOW_TRACKING_URI) to your tracking server."
        )
    apply_http_defaults(options)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    provider = config.header_provider
    if provider.type:
        from kedro_vertex_hooks.auth import install_header_provider

        install_header_provider(provider, kedro_context if provider.pass_context else None)
