"""Living beside kedro-vertexai: its start step and its tags hook must not end the shared run.

kedro-vertexai (1.0) compiles a pipeline whose first task runs ``kedro vertexai mlflow-start``,
which opens the run with MLflow's fluent ``start_run``; MLflow's ``atexit`` handler then ends
it FINISHED when that process exits, before any node ran. In every node step its
``kedro.hooks`` plugin calls fluent ``mlflow.set_tag``, which resumes ``MLFLOW_RUN_ID`` as the
fluent active run, and MLflow ends that FINISHED at the step's exit, after this package set
the status the run deserves (FAILED included). This module keeps both from lying:

- the tags hook is switched off for the session (this package sets the same two tags,
  ``vertexai_run_id`` and ``vertexai_job_name``, from the same variables);
- in the start step, the run it opened is left RUNNING when the process exits;
- its two Google request header providers, named in an existing ``mlflow.yml``, are served by
  this package's classes of the same names and parameters (tokens refreshed from their own
  expiry instead of a fixed 59-minute cache, failures reported instead of ``Bearer None``,
  the IAM API over HTTP instead of gRPC).

Nothing here imports kedro-vertexai.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from kedro_vertex_hooks.kedro_compat import unregister_plugins
from kedro_vertex_hooks.naming import RUN_RUNNING

logger = logging.getLogger(__name__)

_TAGS_HOOK_MODULE = "kedro_vertexai.hooks"
_PROVIDER_EQUIVALENTS = {
    "kedro_vertexai.auth.gcp.MLFlowGoogleIAMRequestHeaderProvider": "gcp-iam",
    "kedro_vertexai.auth.gcp.MLFlowGoogleOauthRequestHeaderProvider": "gcp-oauth",
}
_START_COMMAND = ("vertexai", "mlflow-start")


def switch_off_kedro_vertexai_tags_hook(context: Any) -> bool:
    """Unregister kedro-vertexai's MLflow tags hook from this session; True if it was there."""
    found = unregister_plugins(context, lambda p: type(p).__module__ == _TAGS_HOOK_MODULE)
    if found:
        logger.debug(
            "kedro-vertexai's MLflow tags hook is switched off: kedro-vertex-hooks sets its "
            "tags and keeps the run's status."
        )
    return bool(found)


def in_kedro_vertexai_start_step() -> bool:
    """True inside ``kedro vertexai mlflow-start``, the start task kedro-vertexai compiles."""
    import click

    ctx = click.get_current_context(silent=True)
    names: list[str] = []
    while ctx is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return tuple(names[-2:]) == _START_COMMAND


def keep_start_step_run_running() -> None:
    """At the start step's exit, end the fluent run it opened as RUNNING, not FINISHED.

    MLflow registers its own exit handler when it is imported; importing it first makes ours
    the later registration, which ``atexit`` runs first.
    """
    import mlflow

    def leave_running() -> None:
        run = mlflow.active_run()
        if run is None:
            return
        try:
            mlflow.end_run(status=RUN_RUNNING)
        except Exception as exc:  # the process is exiting: say it, do not raise
            logger.warning(
                "Could not leave MLflow run %s RUNNING at the end of kedro-vertexai's start "
                "step (%s); the first node step sets it RUNNING.",
                run.info.run_id,
                exc,
            )

    atexit.register(leave_running)


def equivalent_provider(provider_type: str) -> str | None:
    """This package's provider for one of kedro-vertexai's header provider class paths."""
    return _PROVIDER_EQUIVALENTS.get(provider_type)
