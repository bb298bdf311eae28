"""What a user sees of a finished pipeline: the run description (the timeline is timeline.py).

Pure functions over plain dicts (a run's tags and metrics, the pipeline's node names), so that
the exit handler, the tests and anyone else can build the same summary. No MLflow import.
Every string that comes from the user (node names, errors, job names) is escaped for the
format it lands in.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from kedro_vertex_hooks.naming import (
    MAX_TAG_VALUE_LENGTH,
    METRIC_NODE_COMPLETED,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    METRIC_NODE_STARTED,
    METRIC_NODE_STARTUP,
    NODE_COMPLETED,
    NODE_FAILED,
    NODE_LOST,
    NODE_RUNNING,
    RECORD_METRICS,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_NODE_ERROR,
    TAG_NODE_HOST,
    TAG_PIPELINE,
    node_key,
    trim,
)
from kedro_vertex_hooks.records import History, latest_by_step, node_positions

NODE_NOT_RUN = "not run"  # display only: a pipeline node with nothing recorded
TIMELINE_ARTIFACT = "timeline.html"
NOTE_ERROR_CHARS = 2000  # the whole error stays in tag kedro.error
HEADLINE_ERROR_CHARS = 160  # the error's first line, as the description's first line quotes it
NOTE_NODE_CHARS = 48  # a node name in the description's table (the timeline has it whole)
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
    """One node as the run recorded it (see records.py)."""

    name: str
    status: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    peak_rss_mb: float | None = None
    host: str | None = None
    startup_s: float | None = None  # from its process's start to the node's start
    error: str | None = None

    @property
    def elapsed_s(self) -> float | None:
        """The node's measured duration, else its end minus its start (a failed node has no
        duration metric), else None."""
        if self.duration_s is not None:
            return self.duration_s
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


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
    project: str | None = None  # the Kedro project's name, when the caller knows it

    @classmethod
    def from_run_data(
        cls,
        status: str,
        tags: Mapping[str, str],
        history: History,
        pipeline_nodes: Sequence[str] = (),
        project: str | None = None,
    ) -> RunSummary:
        return cls(
            status=status,
            nodes=tuple(collect_nodes(tags, history, pipeline_nodes)),
            failed_node=tags.get(TAG_FAILED_NODE),
            error=tags.get(TAG_ERROR),
            pipeline=tags.get(TAG_PIPELINE),
            job_id=tags.get(TAG_JOB_ID),
            job_name=tags.get(TAG_JOB_NAME),
            project=project,
        )

    def count(self, node_status: str) -> int:
        return sum(1 for node in self.nodes if node.status == node_status)


def _moment(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, timezone.utc) if seconds is not None else None


def collect_nodes(
    tags: Mapping[str, str], history: History, pipeline_nodes: Sequence[str] = ()
) -> list[NodeRecord]:
    """Every node of the pipeline, in the order they started (nodes never run last), from
    the record's metric histories and the per-node tags."""
    positions = node_positions(pipeline_nodes)
    latest = {key: latest_by_step(history.get(key, ())) for key in RECORD_METRICS}

    def number(key: str, position: int) -> float | None:
        point = latest[key].get(position)
        return point.value if point is not None else None

    records = []
    for name, position in positions.items():
        started_s = number(METRIC_NODE_STARTED, position)
        outcome = latest[METRIC_NODE_COMPLETED].get(position)
        # The outcome of its latest start (a node re-run since has none yet).
        ended = (
            outcome
            if outcome is not None and (started_s is None or outcome.timestamp >= started_s * 1000)
            else None
        )
        if ended is not None:
            status = NODE_COMPLETED if ended.value >= 1 else NODE_FAILED
        else:
            status = NODE_NOT_RUN if started_s is None else NODE_RUNNING
        records.append(
            NodeRecord(
                name=name,
                status=status,
                started_at=_moment(started_s),
                ended_at=_moment(ended.timestamp / 1000) if ended else None,
                duration_s=number(METRIC_NODE_DURATION, position) if ended else None,
                peak_rss_mb=number(METRIC_NODE_PEAK_RSS, position),
                host=tags.get(node_key(TAG_NODE_HOST, name)),
                startup_s=number(METRIC_NODE_STARTUP, position),
                error=tags.get(node_key(TAG_NODE_ERROR, name)) if status == NODE_FAILED else None,
            )
        )
    never = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(records, key=lambda r: (r.started_at or never, positions[r.name]))


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


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for a label with little room
    (:func:`naming.trim` marks cuts in values that are stored)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_time(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%S") if moment else ""


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str, tab: str = "") -> str | None:
    """The run's page in MLflow's UI for an ``http(s)`` tracking URI (``tab``: e.g.
    ``artifacts``), else None.

    It opens on the UI's "Model training" view: MLflow 3's UI shows experiments in its GenAI
    view (where these runs are "evaluation runs") unless the page's ``workflowType`` says
    otherwise; older UIs ignore it. Credentials in the URI are left out of the link."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else host
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    page = f"{base}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{page}?workflowType=machine_learning"


def outcome_line(summary: RunSummary) -> str:
    """The description's first line, all a person needs when MLflow collapses the rest: the
    status, the failed node and the first line of its error."""
    words = OUTCOME_WORDS.get(summary.status, summary.status.lower())
    line = f"**{escape_markdown(summary.status)}**: the pipeline {words}"
    if summary.failed_node:
        line += f" at node **{escape_markdown(summary.failed_node)}**"
    if summary.error:
        first = next(iter(summary.error.strip().splitlines()), "")
        line += f": {escape_markdown(trim(first, HEADLINE_ERROR_CHARS))}"
    return line


def counts_line(summary: RunSummary) -> str:
    """How many nodes got where, then which pipeline and job: the second line."""
    total = len(summary.nodes)
    counts = [f"{summary.count(NODE_COMPLETED)} of {total} nodes completed"]
    for node_status in (NODE_FAILED, NODE_LOST, NODE_RUNNING, NODE_NOT_RUN):
        if summary.count(node_status):
            counts.append(f"{summary.count(node_status)} {node_status}")
    facts = [", ".join(counts)]
    if summary.pipeline:
        facts.append(f"pipeline {escape_markdown(summary.pipeline)}")
    if summary.job_name:
        facts.append(f"job {escape_markdown(summary.job_name)}")
    if summary.job_id:
        facts.append(f"job id {escape_markdown(summary.job_id)}")
    return " · ".join(facts)


def render_note(summary: RunSummary) -> str:
    """The run description (``mlflow.note.content``), markdown as the MLflow UI renders it.

    The first two lines say everything at a glance (they stay visible when MLflow collapses a
    long description); the node table is a monospaced block, which every markdown renderer
    shows aligned. It fits in one MLflow tag: the error is cut to ``NOTE_ERROR_CHARS`` and,
    for very large pipelines, the table ends with a line saying how many nodes only the
    timeline shows.
    """
    head = [outcome_line(summary) + "  ", counts_line(summary), ""]
    if summary.error:
        head += ["**Error:**", "", markdown_code_block(trim(summary.error, NOTE_ERROR_CHARS)), ""]
    lost = [escape_markdown(node.name) for node in summary.nodes if node.status == NODE_LOST]
    if lost:
        names = trim(", ".join(lost), NOTE_ERROR_CHARS)
        head += [
            f"**Lost:** {names}: the process running them ended without reporting "
            "(killed, out of memory, preempted).",
            "",
        ]
    head.append("**Nodes** (in the order they started; times UTC):")
    foot = [f"Timeline: artifact {TIMELINE_ARTIFACT}."]

    # The host column only when some node has one (failed nodes record theirs).
    columns = len(_NODE_COLUMNS) - (0 if any(n.host for n in summary.nodes) else 1)
    cells = [_NODE_COLUMNS[:columns]] + [
        _node_cells(index, node)[:columns] for index, node in enumerate(summary.nodes, start=1)
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(columns)]
    lines = [_text_row(row, widths) for row in cells]
    room = MAX_TAG_VALUE_LENGTH - len("\n".join(head + foot)) - _NOTE_RESERVE
    shown: list[str] = []
    for line in lines:
        room -= len(line) + 1
        if room < 0:
            left = len(lines) - len(shown)
            shown.append(f"... and {left} more node(s): see {TIMELINE_ARTIFACT}.")
            break
        shown.append(line)
    return "\n".join([*head, "", markdown_code_block("\n".join(shown)), "", *foot]) + "\n"


_NODE_COLUMNS = ("#", "node", "status", "started", "duration", "peak memory", "host")
_RIGHT_ALIGNED = {0, 4, 5}


def _node_cells(index: int, node: NodeRecord) -> tuple[str, ...]:
    return (
        str(index),
        shorten(" ".join(node.name.split()), NOTE_NODE_CHARS),
        node.status,
        format_time(node.started_at),
        format_duration(node.elapsed_s),
        format_memory(node.peak_rss_mb),
        " ".join((node.host or "").split()),
    )


def _text_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [
        cell.rjust(width) if column in _RIGHT_ALIGNED else cell.ljust(width)
        for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(padded).rstrip()


# -- timeline.html -----------------------------------------------------------------------------
