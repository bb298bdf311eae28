"""What a user sees of a finished pipeline: the run description and the ``timeline.html`` chart.

Pure functions over plain dicts (a run's tags and metrics, the pipeline's node names), so that
the exit handler, the tests and anyone else can build the same summary. No MLflow import.
Every string that comes from the user (node names, errors, job names) is escaped for the
format it lands in.
"""

from __future__ import annotations

import html
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

STATUS_COLOURS = {
    NODE_COMPLETED: "#2e7d32",
    NODE_FAILED: "#c62828",
    NODE_LOST: "#ef6c00",
    NODE_RUNNING: "#1565c0",
    NODE_NOT_RUN: "#9e9e9e",
}
_OTHER_COLOUR = "#6a1b9a"  # a status this version does not know

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
_LABEL_WIDTH = 260
_CHART_WIDTH = 720
_ROW_HEIGHT = 26
_AXIS_HEIGHT = 30
_LABEL_CHARS = 36
_RIGHT_MARGIN = 90  # room for the duration written after a bar


def _colour(node_status: str) -> str:
    return STATUS_COLOURS.get(node_status, _OTHER_COLOUR)


def _bounds(nodes: Sequence[NodeRecord]) -> tuple[datetime, datetime] | None:
    moments = [m for node in nodes for m in (node.started_at, node.ended_at) if m is not None]
    if not moments:
        return None
    return min(moments), max(moments)


def _tick_step(span_s: float) -> float:
    """A round tick interval giving at most about 8 ticks."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600):
        if span_s / step <= 8:
            return float(step)
    return 43200.0


def _tick_label(offset_s: float) -> str:
    if offset_s < 60:
        return f"{offset_s:.0f} s"
    if offset_s < 3600:
        return f"{offset_s / 60:.0f} min" if offset_s % 60 == 0 else f"{offset_s / 60:.1f} min"
    return f"{offset_s / 3600:.1f} h"


def _node_tooltip(node: NodeRecord) -> str:
    parts = [node.name, f"status: {node.status}"]
    if node.started_at:
        parts.append(f"start: {node.started_at.isoformat(timespec='milliseconds')}")
    if node.ended_at:
        parts.append(f"end: {node.ended_at.isoformat(timespec='milliseconds')}")
    if node.duration_s is not None:
        parts.append(f"duration: {format_duration(node.duration_s)}")
    if node.peak_rss_mb is not None:
        parts.append(f"peak memory: {format_memory(node.peak_rss_mb)}")
    if node.host:
        parts.append(f"host: {node.host}")
    return "\n".join(parts)


def _bar_caption(node: NodeRecord) -> str:
    """Duration after a finished bar; the status after a bar that never ended."""
    if node.ended_at is None:
        return node.status
    if node.duration_s is not None:
        return format_duration(node.duration_s)
    return format_duration((node.ended_at - node.started_at).total_seconds())


def _svg(summary: RunSummary) -> str:
    nodes = summary.nodes
    height = _AXIS_HEIGHT + _ROW_HEIGHT * max(len(nodes), 1) + 10
    width = _LABEL_WIDTH + _CHART_WIDTH + _RIGHT_MARGIN
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Node timeline">'
    ]
    bounds = _bounds(nodes)
    span_s = max((bounds[1] - bounds[0]).total_seconds(), 1.0) if bounds else 1.0
    scale = _CHART_WIDTH / span_s

    step = _tick_step(span_s)
    tick = 0.0
    while tick <= span_s + 1e-9:
        x = _LABEL_WIDTH + tick * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{_AXIS_HEIGHT - 6}" x2="{x:.1f}" y2="{height - 10}" '
            'class="grid"/>'
            f'<text x="{x:.1f}" y="{_AXIS_HEIGHT - 10}" class="tick">'
            f"{html.escape(_tick_label(tick))}</text>"
        )
        tick += step

    for row, node in enumerate(nodes):
        y = _AXIS_HEIGHT + row * _ROW_HEIGHT
        label = node.name if len(node.name) <= _LABEL_CHARS else node.name[: _LABEL_CHARS - 1] + "…"
        tooltip = html.escape(_node_tooltip(node))
        out.append(
            f'<g><title>{tooltip}</title><text x="{_LABEL_WIDTH - 8}" y="{y + 17}" '
            f'class="label">{html.escape(label)}</text>'
        )
        if bounds and node.started_at:
            end = node.ended_at or bounds[1]
            x = _LABEL_WIDTH + (node.started_at - bounds[0]).total_seconds() * scale
            bar = max((end - node.started_at).total_seconds() * scale, 2.0)
            dashed = ' stroke-dasharray="4 3" fill-opacity="0.55"' if not node.ended_at else ""
            out.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{bar:.1f}" height="{_ROW_HEIGHT - 8}" '
                f'rx="3" fill="{_colour(node.status)}" stroke="{_colour(node.status)}"{dashed}/>'
                f'<text x="{x + bar + 4:.1f}" y="{y + 17}" class="after">'
                f"{html.escape(_bar_caption(node))}</text>"
            )
        else:
            out.append(
                f'<text x="{_LABEL_WIDTH + 4}" y="{y + 17}" class="none">'
                f"{html.escape(node.status)}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _legend(summary: RunSummary) -> str:
    shown = [NODE_COMPLETED, NODE_FAILED, NODE_LOST, NODE_RUNNING, NODE_NOT_RUN]
    shown += sorted({n.status for n in summary.nodes} - set(shown))
    items = [
        f'<span class="key"><span class="swatch" style="background:{_colour(s)}"></span>'
        f"{html.escape(s)} ({summary.count(s)})</span>"
        for s in shown
    ]
    return '<p class="legend">' + "".join(items) + "</p>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#212121}
h1{font-size:18px;margin:0 0 4px}
p{margin:4px 0;font-size:13px}
.error{white-space:pre-wrap;background:#fdecea;border-left:4px solid #c62828;padding:6px 8px;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;max-height:12em;overflow:auto}
.legend .key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
svg .label{font-size:12px;text-anchor:end;fill:#212121}
svg .tick{font-size:11px;text-anchor:middle;fill:#616161}
svg .none{font-size:11px;fill:#9e9e9e;font-style:italic}
svg .after{font-size:11px;fill:#424242}
svg .grid{stroke:#e0e0e0;stroke-width:1}
"""


def render_timeline(summary: RunSummary) -> str:
    """``timeline.html``: a Gantt chart of the nodes, self-contained (no script, no URL)."""
    bounds = _bounds(summary.nodes)
    title = f"Pipeline {summary.pipeline}" if summary.pipeline else "Pipeline"
    header = [f"<h1>{html.escape(title)}: {html.escape(summary.status)}</h1>"]
    if bounds:
        header.append(
            f"<p>From {html.escape(bounds[0].isoformat(timespec='seconds'))} to "
            f"{html.escape(bounds[1].isoformat(timespec='seconds'))} "
            f"({html.escape(format_duration((bounds[1] - bounds[0]).total_seconds()))})</p>"
        )
    if summary.job_id or summary.job_name:
        header.append(
            f"<p>Job {html.escape(summary.job_name or '')} "
            f"({html.escape(summary.job_id or 'no id')})</p>"
        )
    if summary.failed_node:
        header.append(f"<p>Failed node: <b>{html.escape(summary.failed_node)}</b></p>")
    if summary.error:
        header.append(f'<div class="error">{html.escape(summary.error)}</div>')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} timeline</title>"
        f"<style>{_STYLE}</style></head><body>"
        + "".join(header)
        + _legend(summary)
        + _svg(summary)
        + "</body></html>\n"
    )
