"""``kedro vertex-hooks ...``: the run's start step, exit handler and a connection check.

A Kedro plugin command group, so the commands read the project's conf (tracking URI,
experiment, auth provider) exactly as the hooks do. While they load the project context the
hooks stay passive: loading a context must not open a run of its own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kedro_vertex_hooks.naming import ENV_JOB_ID, ENV_JOB_NAME, ENV_RUN_ID

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from kedro_vertex_hooks.config import HookOptions, ProjectConfig

T = TypeVar("T")

ENV_HELP = "Kedro configuration environment (default: the project's default run env)."
CONF_SOURCE_HELP = (
    "Configuration folder or archive, as kedro run --conf-source takes it "
    "(default: the project's conf/)."
)
BUDGET_HELP = (
    "Seconds to keep retrying while the tracking server does not answer "
    "(default: the hooks' outage_budget_s)."
)


@click.group(name="kedro-vertex-hooks")
def commands() -> None:
    """Commands of kedro-vertex-hooks (entry point ``kedro.project_commands``)."""


@commands.group(name="vertex-hooks")
def vertex_hooks() -> None:
    """Open, close and check the pipeline's shared MLflow run."""


@contextlib.contextmanager
def _project(
    metadata: Any, env: str | None, conf_source: str | None
) -> Iterator[tuple[Any, ProjectConfig, HookOptions]]:
    """The project's context and config, loaded with the hooks kept passive; from the same
    conf source as the pipeline's steps (a DAG that runs Kedro with --conf-source)."""
    from kedro.framework.session import KedroSession

    from kedro_vertex_hooks.config import load_project_config
    from kedro_vertex_hooks.hooks import passive

    with (
        passive(),
        KedroSession.create(
            project_path=metadata.project_path, env=env, conf_source=conf_source
        ) as session,
    ):
        context = session.load_context()
        yield context, load_project_config(context), _hook_options()


def _hook_options() -> HookOptions:
    """The options of the project's registered ``MlflowRunHooks`` (HTTP timeouts, budget)."""
    from kedro.framework.project import settings

    from kedro_vertex_hooks.config import HookOptions
    from kedro_vertex_hooks.hooks import MlflowRunHooks

    for hook in settings.HOOKS:
        if isinstance(hook, MlflowRunHooks):
            return hook.options
    return HookOptions()


def _connect(config: ProjectConfig, options: HookOptions, context: Any) -> MlflowClient:
    from kedro_vertex_hooks.connection import connect_mlflow

    return connect_mlflow(config, options, context)


def _with_retries(
    action: Callable[[], T], options: HookOptions, budget_s: float | None, uri: str
) -> T:
    """``action`` retried through an outage (``--outage-budget``, else the hooks' budget)."""
    from kedro_vertex_hooks.retry import OutageClock, retry_transient

    clock = OutageClock(
        options.outage_budget_s if budget_s is None else budget_s, options.overload_budget_s
    )
    return retry_transient(action, clock, f"Tracking URI {uri}")[0]


@contextlib.contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Any failure becomes one line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        from kedro_vertex_hooks.config import ConfigError
        from kedro_vertex_hooks.resolve import RunResolutionError
        from kedro_vertex_hooks.retry import is_transient, short_error

        if isinstance(exc, (ConfigError, RunResolutionError)):
            message = " ".join(str(exc).split())
        elif is_transient(exc):
            message = f"the tracking server cannot be reached: {short_error(exc)}"
        else:
            message = short_error(exc)
        raise click.ClickException(f"{what}: {message}") from None


@vertex_hooks.command(name="start-run")
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--conf-source", default=None, help=CONF_SOURCE_HELP)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the run id to this file (the step's output path).",
)
@click.option("--run-name", default=None, help="Run name (default: the job name).")
@click.option("--job-id", default=None, help=f"Orchestrator job id (default: ${ENV_JOB_ID}).")
@click.option("--job-name", default=None, help=f"Job name (default: ${ENV_JOB_NAME}).")
@click.option("--outage-budget", type=float, default=None, help=BUDGET_HELP)
@click.pass_obj
def start_run_command(
    metadata: Any,
    env: str | None,
    conf_source: str | None,
    output: Path | None,
    run_name: str | None,
    job_id: str | None,
    job_name: str | None,
    outage_budget: float | None,
) -> None:
    """Create the pipeline's run (or find the one of this job) and print its id.

    Only the run id goes to stdout; the run stays RUNNING.
    """
    from kedro_vertex_hooks.lifecycle import start_run
    from kedro_vertex_hooks.resolve import RunSource

    source = RunSource.from_env()
    job_id = job_id or source.job_id
    job_name = job_name or source.job_name
    with (
        _one_line_errors("start-run failed"),
        contextlib.redirect_stdout(sys.stderr),
        _project(metadata, env, conf_source) as (context, config, options),
    ):
        client = _connect(config, options, context)
        created: list[str] = []  # kept across retries: a losing run is deleted on the next
        run = _with_retries(
            lambda: start_run(
                client,
                config.experiment_name,
                job_id,
                job_name,
                run_name,
                options.run_search_settle_s,
                created,
            ),
            options,
            outage_budget,
            config.tracking_uri,
        )
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(run.run_id, encoding="utf-8")
    click.echo(run.run_id)


@vertex_hooks.command(name="finalize")
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--conf-source", default=None, help=CONF_SOURCE_HELP)
@click.option(
    "--run-id",
    default=None,
    help=f"Run to close (default: ${ENV_RUN_ID}, else the run tagged with ${ENV_JOB_ID}).",
)
@click.option(
    "--status",
    "state",
    default=None,
    help="What the orchestrator reports: SUCCEEDED, FAILED or CANCELLED "
    "(PipelineTaskFinalStatus.state).",
)
@click.option("--outage-budget", type=float, default=None, help=BUDGET_HELP)
@click.pass_obj
def finalize_command(
    metadata: Any,
    env: str | None,
    conf_source: str | None,
    run_id: str | None,
    state: str | None,
    outage_budget: float | None,
) -> None:
    """Close the run: terminal status, lost nodes, summary and timeline. Safe to run twice."""
    from kedro_vertex_hooks.lifecycle import finalize, find_run_id
    from kedro_vertex_hooks.pipeline_shape import pipeline_node_names
    from kedro_vertex_hooks.resolve import RunSource
    from kedro_vertex_hooks.summary import run_page_url

    source = RunSource.from_env()
    with (
        _one_line_errors("finalize failed"),
        _project(metadata, env, conf_source) as (context, config, options),
    ):
        client = _connect(config, options, context)

        def close() -> Any:
            target = find_run_id(
                client,
                config.tracking_uri,
                config.experiment_name,
                run_id or source.run_id,
                source.job_id,
            )
            return finalize(
                client,
                config.tracking_uri,
                target,
                pipeline_node_names,
                state,
                project=metadata.project_name,
            )

        result = _with_retries(
            close,
            options,
            outage_budget,
            config.tracking_uri,
        )
    changed = ", ".join(result.changed) or "nothing changed (already finalized)"
    lost = f"; lost nodes: {', '.join(result.lost_nodes)}" if result.lost_nodes else ""
    click.echo(f"MLflow run {result.run_id} is {result.status}: {changed}{lost}", err=True)
    page = run_page_url(config.tracking_uri, result.experiment_id, result.run_id)
    if page:
        click.echo(f"Open it at: {page}", err=True)


@vertex_hooks.command(name="doctor")
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--conf-source", default=None, help=CONF_SOURCE_HELP)
@click.pass_obj
def doctor_command(metadata: Any, env: str | None, conf_source: str | None) -> None:
    """Show where runs go, the auth header (redacted) and whether the server accepts a call."""
    from kedro_vertex_hooks.auth import explain_refusal, installed_provider
    from kedro_vertex_hooks.resolve import RunSource

    with (
        _one_line_errors("doctor"),
        _project(metadata, env, conf_source) as (context, config, options),
    ):
        click.echo(f"Tracking URI: {config.tracking_uri} ({config.tracking_uri_source})")
        click.echo(f"Experiment:   {config.experiment_name}")
        click.echo(f"Run:          {RunSource.from_env().describe()}")
        from kedro_vertex_hooks.connection import connect, why_mlflow_client

        why_mlflow = why_mlflow_client(config.tracking_uri, options)
        steps_use = f"MlflowClient ({why_mlflow})" if why_mlflow else "REST, without MLflow"
        click.echo(f"Node steps:   {steps_use}")
        client = connect(config, options, context)  # a provider that fails stops here
        provider = installed_provider()
        for line in provider.describe() if provider else ["request header provider: none"]:
            click.echo(f"Auth:         {line}")
        try:
            client.get_experiment_by_name(config.experiment_name)  # as a node step would
        except Exception as exc:
            reason = explain_refusal(exc, provider)
            if reason is None:
                raise
            raise click.ClickException(f"doctor: {reason}") from None
    kind = "an authenticated call" if provider else "a call"
    click.echo(f"Tracking server: {config.tracking_uri} answered {kind}")
