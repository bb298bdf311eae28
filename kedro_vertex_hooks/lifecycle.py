"""The run's lifecycle around an orchestrated pipeline: open it first, close it last.

An orchestrator (Vertex AI Pipelines, KFP) opens the shared run in a start step and closes it
in an exit handler, because only the orchestrator knows that a container was killed or the
pipeline cancelled. Decisions (which status, which nodes were lost, what the summary says) are
pure functions over plain data; :func:`start_run` and :func:`finalize` do the I/O around them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kedro_vertex_hooks.naming import (
    DEFAULT_PIPELINE,
    METRIC_NODE_COMPLETED,
    NODE_COMPLETED,
    NODE_FAILED,
    NODE_LOST,
    NODE_RUNNING,
    RECORD_METRICS,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_KILLED,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_PIPELINE,
    TAG_RUN_NOTE,
)
from kedro_vertex_hooks.records import History, Outcomes, read_history
from kedro_vertex_hooks.resolve import (
    ResolvedRun,
    RunResolutionError,
    RunSource,
    fetch_run,
    job_run_name,
    job_tags,
    resolve_run,
    runs_for_job,
)
from kedro_vertex_hooks.summary import (
    TIMELINE_ARTIFACT,
    NodeRecord,
    RunSummary,
    render_note,
)
from kedro_vertex_hooks.timeline import render_timeline

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


FINISHED, FAILED, KILLED = RUN_FINISHED, RUN_FAILED, RUN_KILLED
# PipelineTaskFinalStatus.state values (KFP, Vertex AI Pipelines).
STATE_SUCCEEDED, STATE_FAILED, STATE_CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
ORCHESTRATOR_STATES = (STATE_SUCCEEDED, STATE_FAILED, STATE_CANCELLED)


# -- decisions (pure) ------------------------------------------------------------------------
def normalise_state(state: str | None) -> str | None:
    """The orchestrator's verdict in upper case; an unknown word gives no verdict (warned)."""
    if not state or not state.strip():
        return None
    upper = state.strip().upper()
    if upper not in ORCHESTRATOR_STATES:
        logger.warning(
            "Unknown orchestrator state %r (expected one of %s): deciding from the nodes alone",
            state,
            ", ".join(ORCHESTRATOR_STATES),
        )
        return None
    return upper


def terminal_status(
    current_status: str,
    nodes: Sequence[NodeRecord],
    orchestrator_state: str | None,
    failure_recorded: bool,
) -> str:
    """FAILED if anything failed (sticky), KILLED if cancelled or unfinished, else FINISHED."""
    if (
        current_status == FAILED
        or failure_recorded
        or orchestrator_state == STATE_FAILED
        or any(node.status == NODE_FAILED for node in nodes)
    ):
        return FAILED
    if orchestrator_state == STATE_CANCELLED:
        return KILLED
    if any(node.status != NODE_COMPLETED for node in nodes):
        return KILLED
    return FINISHED


def mark_lost(nodes: Sequence[NodeRecord]) -> list[NodeRecord]:
    """Nodes still ``running`` when the run is closed are ``lost``: their process died."""
    return [replace(n, status=NODE_LOST) if n.status == NODE_RUNNING else n for n in nodes]


@dataclass(frozen=True)
class FinalizePlan:
    """What finalize writes: only what differs from the run as it is."""

    status: str
    change_status: bool
    tags: dict[str, str]
    timeline_html: str
    summary: RunSummary
    lost_nodes: tuple[str, ...] = ()


def plan_finalize(
    current_status: str,
    tags: Mapping[str, str],
    history: History,
    pipeline_nodes: Sequence[str],
    orchestrator_state: str | None,
    project: str | None = None,
) -> FinalizePlan:
    """Decide the terminal status, the lost nodes and the summary from the run's data."""
    found = RunSummary.from_run_data(current_status, tags, history, pipeline_nodes, project)
    nodes = mark_lost(found.nodes)
    failure_recorded = (
        TAG_FAILED_NODE in tags
        or Outcomes.from_points(history.get(METRIC_NODE_COMPLETED, ())).any_failed
    )
    status = terminal_status(current_status, nodes, orchestrator_state, failure_recorded)
    summary = replace(found, status=status, nodes=tuple(nodes))
    note = render_note(summary)
    return FinalizePlan(
        status=status,
        change_status=status != current_status,
        tags={} if tags.get(TAG_RUN_NOTE) == note else {TAG_RUN_NOTE: note},
        timeline_html=render_timeline(summary),
        summary=summary,
        lost_nodes=tuple(n.name for n in found.nodes if n.status == NODE_RUNNING),
    )


# -- I/O -------------------------------------------------------------------------------------
def start_run(
    client: MlflowClient,
    experiment_name: str,
    job_id: str | None,
    job_name: str | None,
    run_name: str | None = None,
    settle_s: float = 1.0,
    created: list[str] | None = None,
) -> ResolvedRun:
    """The pipeline's run, left RUNNING: the run tagged with ``job_id`` if one exists.

    A retried or cached start step therefore never forks the run. Without a job id there is
    nothing to find: a new run is created.
    """
    source = RunSource("job" if job_id else "local", None, job_id, job_name)
    return resolve_run(
        client,
        source,
        client.tracking_uri,
        experiment_name,
        settle_s,
        run_name=run_name or job_run_name(job_id, job_name),
        new_run_tags=job_tags(None, job_name),
        created=created,
    )


def find_run_id(
    client: MlflowClient,
    tracking_uri: str,
    experiment_name: str,
    run_id: str | None,
    job_id: str | None,
) -> str:
    """The run to finalize: the given id, else the run tagged with the job id."""
    if run_id:
        return run_id
    if not job_id:
        raise RunResolutionError(
            "No run to finalize: pass --run-id, or set MLFLOW_RUN_ID or KEDRO_CONFIG_RUN_ID "
            f"(tracking URI {tracking_uri})."
        )
    experiment = client.get_experiment_by_name(experiment_name)
    runs = runs_for_job(client, experiment.experiment_id, job_id) if experiment else []
    if not runs:
        raise RunResolutionError(
            f"No MLflow run tagged {TAG_JOB_ID}={job_id} in experiment "
            f"'{experiment_name}' at tracking URI {tracking_uri}."
        )
    return runs[0].info.run_id


@dataclass
class FinalizeResult:
    run_id: str
    experiment_id: str
    status: str
    changed: list[str] = field(default_factory=list)  # what this call wrote, in words
    lost_nodes: tuple[str, ...] = ()


def finalize(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    node_names_for: Callable[[str], Sequence[str]],
    orchestrator_state: str | None = None,
    project: str | None = None,
) -> FinalizeResult:
    """Close the run: terminal status, lost nodes, summary note and ``timeline.html``.

    ``node_names_for(pipeline_name)`` lists the pipeline's nodes, so that nodes that never
    ran count too. Writes only what differs from the run as found: a second call changes
    nothing.
    """
    resolved = fetch_run(client, run_id, tracking_uri)
    history = read_history(client, run_id, RECORD_METRICS)
    pipeline_name = resolved.tags.get(TAG_PIPELINE) or DEFAULT_PIPELINE
    plan = plan_finalize(
        resolved.status,
        resolved.tags,
        history,
        node_names_for(pipeline_name),
        normalise_state(orchestrator_state),
        project,
    )
    result = FinalizeResult(run_id, resolved.experiment_id, plan.status, lost_nodes=plan.lost_nodes)
    if plan.tags:
        client.log_batch(run_id, tags=_run_tags(plan.tags))
        result.changed.append(f"{len(plan.tags)} tag(s)")
    if _stored_timeline(client, run_id) != plan.timeline_html:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / TIMELINE_ARTIFACT
            path.write_text(plan.timeline_html, encoding="utf-8")
            client.log_artifact(run_id, str(path))
        result.changed.append(TIMELINE_ARTIFACT)
    if plan.change_status:
        client.set_terminated(run_id, plan.status)
        result.changed.append(f"status {resolved.status} -> {plan.status}")
    return result


def _run_tags(tags: Mapping[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(key, value) for key, value in tags.items()]


def _stored_timeline(client: MlflowClient, run_id: str) -> str | None:
    """The run's current ``timeline.html``, or None when it has none."""
    if not any(item.path == TIMELINE_ARTIFACT for item in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, TIMELINE_ARTIFACT, folder)
        return Path(local).read_text(encoding="utf-8")
