"""Which MLflow run this process logs into, decided and checked once, before the first node.

Order: ``MLFLOW_RUN_ID`` (resume), then the orchestrator's job id (find the run tagged with
it, or create it, converging when steps race): ``KEDRO_CONFIG_RUN_ID``, else an orchestrator's
own run id from :data:`ORCHESTRATOR_JOB_VARIABLES`; else local mode (a run of this
``kedro run`` alone).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import msgspec

from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import (
    ENV_JOB_ID,
    ENV_JOB_NAME,
    ENV_RUN_ID,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_PIPELINE,
)
from kedro_vertex_hooks.retry import (
    OutageClock,
    TrackingError,
    TrackingUnreachableError,
    is_transient,
    retry_transient,
    short_error,
)

if TYPE_CHECKING:
    from kedro_vertex_hooks.config import HookOptions, ProjectConfig
    from kedro_vertex_hooks.tracking_client import Run, TrackingClient

# (run id variable, job name variable) that orchestrators set in every task's environment,
# in the order they are tried after KEDRO_CONFIG_RUN_ID. Airflow 3 exports the task context
# into the environment of every task it runs, stock kedro-airflow DAGs included. Its run ids
# are unique only within a DAG (every @once run is "scheduled__2023-01-01T00:00:00+00:00"),
# so the job id is "<job name>/<run id>".
ORCHESTRATOR_JOB_VARIABLES = (("AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_DAG_ID"),)

_RUN_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")

Mode = Literal["resume", "job", "local"]


class RunResolutionError(UserError):
    """The run cannot be used; the message names the run id and the tracking URI."""


class RunSource(msgspec.Struct, frozen=True):
    """Where the run comes from, read from the environment before anything can change it."""

    mode: Mode
    run_id: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    job_id_variable: str = ENV_JOB_ID  # where job_id came from, for messages

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSource:
        env = os.environ if environ is None else environ

        def read(name: str) -> str | None:
            return env.get(name, "").strip() or None

        run_id, job_id, job_name = read(ENV_RUN_ID), read(ENV_JOB_ID), read(ENV_JOB_NAME)
        job_id_variable = ENV_JOB_ID
        if job_id is None:
            for id_variable, name_variable in ORCHESTRATOR_JOB_VARIABLES:
                orchestrator_run_id, orchestrator_job = read(id_variable), read(name_variable)
                if orchestrator_run_id is None:
                    continue
                job_id, job_id_variable = orchestrator_run_id, id_variable
                if orchestrator_job is not None:
                    job_id = f"{orchestrator_job}/{orchestrator_run_id}"
                    job_id_variable = f"{name_variable}/{id_variable}"
                job_name = job_name or orchestrator_job
                break
        if run_id:
            return cls("resume", run_id, job_id, job_name, job_id_variable)
        if job_id:
            return cls("job", None, job_id, job_name, job_id_variable)
        return cls("local", None, None, job_name)

    def describe(self) -> str:
        if self.mode == "resume":
            return f"{ENV_RUN_ID}={self.run_id} (resume that run)"
        if self.mode == "job":
            return (
                f"{self.job_id_variable}={self.job_id} (the run tagged {TAG_JOB_ID}={self.job_id})"
            )
        return "local mode: a new run for this kedro run"


class ResolvedRun(msgspec.Struct):
    """The run, as read once at start: its id, status and, when read whole (a run found by
    job id or created), what it already holds."""

    run_id: str
    experiment_id: str
    status: str
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    params: dict[str, str] = msgspec.field(default_factory=dict)
    created_here: bool = False

    @classmethod
    def from_run(cls, run: Run, created_here: bool = False) -> ResolvedRun:
        return cls(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            created_here=created_here,
        )


def check_run_id_format(run_id: str, tracking_uri: str) -> None:
    if not _RUN_ID_PATTERN.match(run_id):
        raise RunResolutionError(
            f"{ENV_RUN_ID}={run_id!r} is not a valid MLflow run id (expected letters, digits, "
            f"'-' or '_'); tracking URI {tracking_uri}. Pass the id printed by the start step."
        )


def fetch_run(
    client: TrackingClient, run_id: str, tracking_uri: str, *, whole: bool = True
) -> ResolvedRun:
    """Read the run once; a missing or deleted run is an error naming the id and the URI.

    With ``whole=False`` only its info is read (status, experiment), not its params, tags
    and metrics: what a node step needs, at a cost that does not grow with the pipeline.
    """
    check_run_id_format(run_id, tracking_uri)
    try:
        if whole:
            run = client.get_run(run_id)
            info, resolved = run.info, ResolvedRun.from_run(run)
        else:
            info = client.touch_run(run_id)
            resolved = ResolvedRun(run_id, info.experiment_id, info.status)
    except Exception as exc:  # MLflow's or the REST client's error, both with error_code
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise RunResolutionError(
                f"MLflow run {run_id} does not exist at tracking URI {tracking_uri}. "
                f"Check {ENV_RUN_ID} and that this step uses the same tracking server as the "
                "step that created the run."
            ) from None
        raise
    if info.lifecycle_stage == "deleted":
        raise RunResolutionError(
            f"MLflow run {run_id} at tracking URI {tracking_uri} is deleted. Restore it "
            "(mlflow runs restore) or start a new run for this pipeline."
        )
    return resolved


def active_experiment_id(client: TrackingClient, name: str) -> str | None:
    """The id of experiment ``name`` if it exists and is not deleted; None otherwise, or when
    it cannot be read now (:func:`ensure_experiment` then reads it again, through outages)."""
    try:
        experiment = client.get_experiment_by_name(name)
    except Exception:
        return None
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return None
    return experiment.experiment_id


def ensure_experiment(client: TrackingClient, name: str) -> str:
    """Experiment id for ``name``, created if needed (safe when steps race to create it)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def runs_for_job(client: TrackingClient, experiment_id: str, job_id: str) -> list[Run]:
    """Active runs tagged with ``job_id``, oldest first, ties broken by run id."""
    escaped = job_id.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TAG_JOB_ID} = '{escaped}'",
        max_results=50,
    )
    return sorted(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id))


def job_tags(job_id: str | None, job_name: str | None) -> dict[str, str]:
    tags = {}
    if job_id:
        tags[TAG_JOB_ID] = job_id
    if job_name:
        tags[TAG_JOB_NAME] = job_name
    return tags


# A job name's trailing timestamp, as Vertex AI (``<pipeline>-20261203080015``) and KFP's
# local runner (``<pipeline>-2026-12-03-08-00-15-087906``) end job names with it.
_TRAILING_TIMESTAMP = re.compile(
    r"^(?P<name>.+?)[-_](?P<y>\d{4})-?(?P<mo>\d{2})-?(?P<d>\d{2})[-_T]?"
    r"(?P<h>\d{2})-?(?P<mi>\d{2})-?(?P<s>\d{2})(?:[-_.]\d{1,6})?$"
)


def job_run_name(job_id: str | None, job_name: str | None) -> str | None:
    """The name of a job's run, its distinguishing part first, so that the runs list, which
    cuts long names, tells the runs of one pipeline apart: for a job whose id is ``<job
    name>/<run id>`` (an Airflow DAG, whose name is the same every run) ``<run id> · <job
    name>``; for a job name that ends with a timestamp ``2026-12-03 08:00:15 · <pipeline>``;
    else the job name. The ``vertexai_job_name`` tag keeps the job name as it is."""
    if job_id and job_name and job_id.startswith(job_name + "/"):
        return f"{job_id[len(job_name) + 1 :]} · {job_name}"
    stamped = _TRAILING_TIMESTAMP.match(job_name or "")
    if stamped:
        when = "{y}-{mo}-{d} {h}:{mi}:{s}".format(**stamped.groupdict())
        return f"{when} · {stamped['name']}"
    return job_name


def find_or_create_job_run(
    client: TrackingClient,
    experiment_id: str,
    job_id: str,
    job_name: str | None,
    run_name: str | None,
    settle_s: float,
    created: list[str],
) -> ResolvedRun:
    """The run of this orchestrator job; steps that start together converge on one.

    A step that finds no run creates one, waits ``settle_s`` for racing steps to create
    theirs, then all pick the oldest (ties by run id); the others delete the run they made.
    A step that finds a run still settling (created less than ``settle_s`` ago) waits until
    its creator has decided too: an older racing run may yet appear and win, and the run
    found would then be deleted with this step's writes in it.

    ``created`` holds the runs this step made and has not deleted yet; it outlives a retry
    of the whole resolution, so a step whose search or delete failed after its create still
    deletes its losing run on the next try instead of leaving a second active run behind.
    """
    existing = runs_for_job(client, experiment_id, job_id)
    if existing:
        wait_s = _settling_s(existing[0], settle_s)
        if wait_s > 0:
            time.sleep(wait_s)
            existing = runs_for_job(client, experiment_id, job_id) or existing
        return _keep_winner(client, existing[0], created)
    mine = client.create_run(
        experiment_id,
        tags=job_tags(job_id, job_name),
        run_name=run_name or job_run_name(job_id, job_name),
    )
    created.append(mine.info.run_id)
    time.sleep(settle_s)
    candidates = runs_for_job(client, experiment_id, job_id) or [mine]
    return _keep_winner(client, candidates[0], created)


def _keep_winner(client: TrackingClient, winner: Run, created: list[str]) -> ResolvedRun:
    """Delete the runs this step created that lost to ``winner``; the run to log into."""
    for run_id in list(created):
        if run_id != winner.info.run_id:
            client.delete_run(run_id)
            created.remove(run_id)
    return ResolvedRun.from_run(winner, created_here=winner.info.run_id in created)


_SETTLE_MARGIN_S = 0.5  # the creator's own search, after its settle_s, takes a request too


def _settling_s(run: Run, settle_s: float) -> float:
    """How long until ``run``'s creator has made its choice (0 when it has).

    ``start_time`` is the creator's clock, maybe another machine's: a start in the future
    (a clock ahead) means at most one whole settle, never the clocks' difference.
    """
    if run.info.start_time is None or settle_s <= 0:
        return 0.0
    full_wait_s = settle_s + _SETTLE_MARGIN_S
    age_s = time.time() - run.info.start_time / 1000
    return min(full_wait_s, max(0.0, full_wait_s - age_s))


def resolve_run(
    client: TrackingClient,
    source: RunSource,
    tracking_uri: str,
    experiment_name: str,
    settle_s: float,
    run_name: str | None = None,
    new_run_tags: dict[str, str] | None = None,
    created: list[str] | None = None,
    experiment_id: str | None = None,
) -> ResolvedRun:
    """The one decision of which run: resumed by id, the job's (found, or created by whichever
    racing step wins), or a new one with ``new_run_tags``. Node steps and ``start-run`` both
    come here. Pass the same ``created`` list to every retry of one resolution (see
    :func:`find_or_create_job_run`); ``experiment_id``: the experiment, when already looked
    up (:func:`active_experiment_id`)."""
    if source.mode == "resume":
        assert source.run_id is not None
        return fetch_run(client, source.run_id, tracking_uri, whole=False)
    experiment_id = experiment_id or ensure_experiment(client, experiment_name)
    if source.mode == "job":
        assert source.job_id is not None
        return find_or_create_job_run(
            client,
            experiment_id,
            source.job_id,
            source.job_name,
            run_name,
            settle_s,
            created if created is not None else [],
        )
    run = client.create_run(experiment_id, tags=new_run_tags or {}, run_name=run_name)
    return ResolvedRun.from_run(run, created_here=True)


def resolve_step_run(
    client: TrackingClient,
    config: ProjectConfig,
    options: HookOptions,
    source: RunSource,
    pipeline_name: str,
    experiment_id: str | None = None,
) -> ResolvedRun:
    """:func:`resolve_run` for a node step, retried through a short outage; a refusal or an
    outage that outlasts the budget is one line naming the run source and the URI."""
    what = f"Tracking URI {config.tracking_uri}"
    clock = OutageClock(options.outage_budget_s, options.overload_budget_s)
    created: list[str] = []  # kept across retries: a losing run is deleted on the next
    try:
        run, _ = retry_transient(
            lambda: resolve_run(
                client,
                source,
                config.tracking_uri,
                config.experiment_name,
                options.run_search_settle_s,
                new_run_tags={TAG_PIPELINE: pipeline_name},
                created=created,
                experiment_id=experiment_id,
            ),
            clock,
            what,
        )
    except UserError:
        raise
    except Exception as exc:
        if not is_transient(exc):
            raise _refused(exc, source, config.tracking_uri) from None
        hint = (
            ""
            if options.run_untracked_if_unreachable
            else " Set MlflowRunHooks(run_untracked_if_unreachable=True) to run untracked."
        )
        raise TrackingUnreachableError(
            f"Cannot resolve the MLflow run ({source.describe()}): the tracking server at "
            f"{config.tracking_uri} {clock.exhausted()}: {short_error(exc)}.{hint}"
        ) from None
    return run


def _refused(exc: Exception, source: RunSource, tracking_uri: str) -> TrackingError:
    """The server answered, but not with the run: one line, with the likely cause in words."""
    from kedro_vertex_hooks.auth import explain_refusal, installed_provider

    reason = explain_refusal(exc, installed_provider())
    return TrackingError(
        f"Cannot resolve the MLflow run ({source.describe()}) at tracking URI {tracking_uri}: "
        f"{short_error(exc)}" + (f". {reason}" if reason else "")
    )
