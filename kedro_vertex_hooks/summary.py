"""What a user sees of a finished pipeline: the run description (the timeline is timeline.py).

Pure functions over plain dicts (a run's tags and metrics, the pipeline's node names), so that
the exit handler, the tests and anyone else can build the same summary. No MLflow import.
Every string that comes from the user (node names, errors, job names) is escaped for the
format it lands in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from kedro_vertex_hooks.naming import (
    MAX_TAG_VALUE_LENGTH,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    NODE_COMPLETED,
    NODE_FAILED,
    NODE_LOST,
    NODE_RUNNING,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_NODE_ENDED,
    TAG_NODE_HOST,
    TAG_NODE_STARTED,
    TAG_NODE_STATUS,
    TAG_PIPELINE,
    node_from_key,
    node_key,
    trim,
)

NODE_NOT_RUN = "not run"  # display only: a pipeline node without any status tag
TIMELINE_ARTIFACT = "timeline.html"
NOTE_ERROR_CHARS = 2000  # the whole error stays in tag kedro.error
_NOTE_RESERVE = 100  # room for the "... and N more" line

OUTCOME_WORDS = {
    "FINISHED": "succeeded",
    "FAILED": "failed",
    "KILLED": "was stopped before all nodes finished",
    "RUNNING": "is still running",
    "SCHEDULED": "has not started",
}


@dataclass(frozen=True)
class NodeRecord:
    """One node as the run recorded it: its Kedro name (key-legal if only known from tags)."""

    name: str
    status: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    peak_rss_mb: float | None = None
    host: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """The run's outcome and its nodes, in the order they ran (nodes never run last)."""

    status: str
    nodes: tuple[NodeRecord, ...]
    failed_node: str | None = None
    error: str | None = None
    pipeline: str | None = None
    job_id: str | None = None
    job_name: str | None = None

    @classmethod
    def from_run_data(
        cls,
        status: str,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        pipeline_nodes: Sequence[str] = (),
    ) -> RunSummary:
        return cls(
            status=status,
            nodes=tuple(collect_nodes(tags, metrics, pipeline_nodes)),
            failed_node=tags.get(TAG_FAILED_NODE),
            error=tags.get(TAG_ERROR),
            pipeline=tags.get(TAG_PIPELINE),
            job_id=tags.get(TAG_JOB_ID),
            job_name=tags.get(TAG_JOB_NAME),
        )

    def count(self, node_status: str) -> int:
        return sum(1 for node in self.nodes if node.status == node_status)


def parse_timestamp(text: str | None) -> datetime | None:
    """An ISO-8601 tag value as an aware UTC datetime; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def recorded_node_names(tags: Mapping[str, str]) -> list[str]:
    """Key-legal names of the nodes that have a status tag in the run."""
    return [name for key in tags if (name := node_from_key(TAG_NODE_STATUS, key)) is not None]


def collect_nodes(
    tags: Mapping[str, str], metrics: Mapping[str, float], pipeline_nodes: Sequence[str] = ()
) -> list[NodeRecord]:
    """Every node of the pipeline plus any other node the run recorded, in the order they ran.

    ``pipeline_nodes`` are Kedro node names in pipeline order; their keys are built with
    :func:`naming.node_key` for each prefix, exactly as the hooks wrote them.
    """
    names = list(dict.fromkeys(pipeline_nodes))
    known = {node_from_key(TAG_NODE_STATUS, node_key(TAG_NODE_STATUS, name)) for name in names}
    names = list(dict.fromkeys(names + sorted(set(recorded_node_names(tags)) - known)))

    def number(prefix: str, name: str) -> float | None:
        found = metrics.get(node_key(prefix, name))
        return float(found) if found is not None else None

    records = [
        NodeRecord(
            name=name,
            status=tags.get(node_key(TAG_NODE_STATUS, name)) or NODE_NOT_RUN,
            started_at=parse_timestamp(tags.get(node_key(TAG_NODE_STARTED, name))),
            ended_at=parse_timestamp(tags.get(node_key(TAG_NODE_ENDED, name))),
            duration_s=number(METRIC_NODE_DURATION, name),
            peak_rss_mb=number(METRIC_NODE_PEAK_RSS, name),
            host=tags.get(node_key(TAG_NODE_HOST, name)),
        )
        for name in names
    ]
    position = {name: index for index, name in enumerate(names)}
    never = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(records, key=lambda r: (r.started_at or never, position[r.name]))


# -- formatting helpers ------------------------------------------------------------------------
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def escape_markdown(text: str) -> str:
    """Text shown literally in markdown (and in a table cell): one line, nothing interpreted."""
    one_line = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line.replace("&", "&amp;").replace("<", "&lt;"))


def markdown_code_block(text: str) -> str:
    """``text`` verbatim in a fenced block whose fence no backtick run inside can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_memory(megabytes: float | None) -> str:
    if megabytes is None:
        return ""
    if megabytes >= 1024:
        return f"{megabytes / 1024:.1f} GB"
    return f"{megabytes:.0f} MB"


def format_time(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%S") if moment else ""


def outcome_line(summary: RunSummary) -> str:
    """One line: the run's status, what it means, and how many nodes got where."""
    total = len(summary.nodes)
    counts = [f"{summary.count(NODE_COMPLETED)} of {total} nodes completed"]
    for node_status in (NODE_FAILED, NODE_LOST, NODE_RUNNING, NODE_NOT_RUN):
        if summary.count(node_status):
            counts.append(f"{summary.count(node_status)} {node_status}")
    words = OUTCOME_WORDS.get(summary.status, summary.status.lower())
    return f"**{escape_markdown(summary.status)}**: the pipeline {words}; " + ", ".join(counts)


def render_note(summary: RunSummary) -> str:
    """The run description (``mlflow.note.content``), markdown as the MLflow UI renders it.

    It fits in one MLflow tag: the error is cut to ``NOTE_ERROR_CHARS`` and, for very large
    pipelines, the table ends with a line saying how many nodes only the timeline shows.
    """
    head = [outcome_line(summary), ""]
    if summary.failed_node or summary.error:
        head += [f"**Failed node:** {escape_markdown(summary.failed_node or 'unknown')}", ""]
        if summary.error:
            error = trim(summary.error, NOTE_ERROR_CHARS)
            head += ["**Error:**", "", markdown_code_block(error), ""]
    lost = [escape_markdown(node.name) for node in summary.nodes if node.status == NODE_LOST]
    if lost:
        names = trim(", ".join(lost), NOTE_ERROR_CHARS)
        head += [
            f"**Lost:** {names}: the process running them ended without reporting "
            "(killed, out of memory, preempted).",
            "",
        ]
    head += [
        "| # | Node | Status | Started (UTC) | Duration | Peak memory | Host |",
        "|---:|---|---|---|---:|---:|---|",
    ]
    details = []
    if summary.pipeline:
        details.append(f"Kedro pipeline: {escape_markdown(summary.pipeline)}")
    details.append(f"Orchestrator job id: {escape_markdown(summary.job_id or 'none')}")
    details.append(f"Job name: {escape_markdown(summary.job_name or 'none')}")
    foot = ["", "  \n".join(details)]

    room = MAX_TAG_VALUE_LENGTH - len("\n".join(head + foot)) - _NOTE_RESERVE
    rows: list[str] = []
    for index, node in enumerate(summary.nodes, start=1):
        row = "| " + " | ".join(_note_cells(index, node)) + " |"
        room -= len(row) + 1
        if room < 0:
            left = len(summary.nodes) - len(rows)
            rows += ["", f"... and {left} more node(s): see {TIMELINE_ARTIFACT}."]
            break
        rows.append(row)
    return "\n".join(head + rows + foot) + "\n"


def _note_cells(index: int, node: NodeRecord) -> list[str]:
    return [
        str(index),
        escape_markdown(node.name),
        escape_markdown(node.status),
        format_time(node.started_at),
        format_duration(node.duration_s),
        format_memory(node.peak_rss_mb),
        escape_markdown(node.host or ""),
    ]


# -- timeline.html -----------------------------------------------------------------------------
