"""``timeline.html``: a self-contained Gantt chart of the run's nodes (inline SVG and CSS).

One bar per node from its start to its end, coloured by status, after a pale bar for its
process's start-up (where the time between nodes goes), the failed node's row marked;
the chart scales to the width it is shown in; nothing is fetched from the network, so MLflow's
artifact viewer shows it as is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timedelta

from kedro_vertex_hooks.naming import NODE_COMPLETED, NODE_FAILED, NODE_LOST, NODE_RUNNING
from kedro_vertex_hooks.summary import (
    NODE_NOT_RUN,
    NodeRecord,
    RunSummary,
    format_duration,
    format_memory,
    shorten,
)

STATUS_COLOURS = {
    NODE_COMPLETED: "#2e7d32",
    NODE_FAILED: "#c62828",
    NODE_LOST: "#ef6c00",
    NODE_RUNNING: "#1565c0",
    NODE_NOT_RUN: "#9e9e9e",
}
_OTHER_COLOUR = "#6a1b9a"  # a status this version does not know

# The chart is drawn in a coordinate space 720 wide and scaled to its container (viewBox,
# width 100 %): MLflow 3's artifact pane is 600-870 px wide (less with its assistant panel
# open), where 12-unit text stays 10-14 px.
_LABEL_WIDTH = 200
_CHART_WIDTH = 440
_ROW_HEIGHT = 26
_AXIS_HEIGHT = 30
_FOOT_HEIGHT = 24  # the axis caption under the rows
_LABEL_CHARS = 28
_RIGHT_MARGIN = 80  # room for the duration written after a bar
_CAPTION_UNITS_PER_CHAR = 7  # 12-unit text, generously
_FAILED_ROW = "#fdecea"
_STARTUP_COLOUR = "#cfd8dc"


def _colour(node_status: str) -> str:
    return STATUS_COLOURS.get(node_status, _OTHER_COLOUR)


def _process_start(node: NodeRecord) -> datetime | None:
    if node.started_at is None or node.startup_s is None:
        return None
    return node.started_at - timedelta(seconds=node.startup_s)


def _bounds(nodes: Sequence[NodeRecord]) -> tuple[datetime, datetime] | None:
    moments = [
        m
        for node in nodes
        for m in (_process_start(node), node.started_at, node.ended_at)
        if m is not None
    ]
    if not moments:
        return None
    return min(moments), max(moments)


def _tick_step(span_s: float) -> float:
    """A round tick interval giving at most about 8 ticks."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600):
        if span_s / step <= 8:
            return float(step)
    return 43200.0


def tick_label(offset_s: float) -> str:
    """An axis tick exactly as far from the start as it says: 45 s, 1 min 15 s, 2 h 30 min."""
    whole = round(offset_s)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, seconds = divmod(whole, 60)
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def clock(moment: datetime) -> str:
    """A moment as a person reads it in a tooltip: ``06:00:01.250 UTC``."""
    return moment.strftime("%H:%M:%S.%f")[:-3] + " UTC"


def _node_tooltip(node: NodeRecord) -> str:
    parts = [node.name, f"status: {node.status}"]
    if node.startup_s is not None:
        parts.append(f"process start-up: {format_duration(node.startup_s)}")
    if node.started_at:
        parts.append(f"start: {clock(node.started_at)}")
    if node.ended_at:
        parts.append(f"end: {clock(node.ended_at)}")
    if node.elapsed_s is not None:
        parts.append(f"duration: {format_duration(node.elapsed_s)}")
    if node.peak_rss_mb is not None:
        parts.append(f"peak memory: {format_memory(node.peak_rss_mb)}")
    if node.host:
        parts.append(f"host: {node.host}")
    return "\n".join(parts)


def _bar_caption(node: NodeRecord) -> str:
    """Duration after a finished bar; the status after a bar that never ended; a failed
    node's bar says so in words, not only in colour."""
    if node.ended_at is None:
        return node.status
    duration = format_duration(node.elapsed_s)
    return f"{node.status}, {duration}" if node.status == NODE_FAILED else duration


def _svg(summary: RunSummary) -> str:
    nodes = summary.nodes
    rows_bottom = _AXIS_HEIGHT + _ROW_HEIGHT * max(len(nodes), 1)
    height = rows_bottom + _FOOT_HEIGHT
    width = _LABEL_WIDTH + _CHART_WIDTH + _RIGHT_MARGIN
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
        f'style="max-width:{width * 1.25:.0f}px" role="img" aria-label="Node timeline">'
    ]
    for row, node in enumerate(nodes):  # a failed node's row stands out across the chart
        if node.status == NODE_FAILED:
            y = _AXIS_HEIGHT + row * _ROW_HEIGHT
            out.append(
                f'<rect x="0" y="{y}" width="{width}" height="{_ROW_HEIGHT}" '
                f'fill="{_FAILED_ROW}" class="failed-row"/>'
            )
    bounds = _bounds(nodes)
    span_s = max((bounds[1] - bounds[0]).total_seconds(), 1.0) if bounds else 1.0
    scale = _CHART_WIDTH / span_s

    step = _tick_step(span_s)
    tick = 0.0
    while tick <= span_s + 1e-9:
        x = _LABEL_WIDTH + tick * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{_AXIS_HEIGHT - 6}" x2="{x:.1f}" y2="{rows_bottom}" '
            'class="grid"/>'
            f'<text x="{x:.1f}" y="{_AXIS_HEIGHT - 10}" class="tick">'
            f"{html.escape(tick_label(tick))}</text>"
        )
        tick += step
    first = "first process" if any(_process_start(n) for n in nodes) else "first node"
    out.append(
        f'<text x="{_LABEL_WIDTH}" y="{height - 6}" class="caption">'
        f"time since the {first} started</text>"
    )

    for row, node in enumerate(nodes):
        y = _AXIS_HEIGHT + row * _ROW_HEIGHT
        label = shorten(node.name, _LABEL_CHARS)
        tooltip = html.escape(_node_tooltip(node))
        label_class = "label failed" if node.status == NODE_FAILED else "label"
        out.append(
            f'<g><title>{tooltip}</title><text x="{_LABEL_WIDTH - 8}" y="{y + 17}" '
            f'class="{label_class}">{html.escape(label)}</text>'
        )
        process_start = _process_start(node)
        left = None  # where the row's drawing starts: its start-up bar, else its node bar
        if bounds and process_start and node.started_at:
            left = _LABEL_WIDTH + (process_start - bounds[0]).total_seconds() * scale
            width_s = (node.started_at - process_start).total_seconds()
            out.append(
                f'<rect x="{left:.1f}" y="{y + 8}" width="{width_s * scale:.1f}" '
                f'height="{_ROW_HEIGHT - 16}" fill="{_STARTUP_COLOUR}" class="startup"/>'
            )
        if bounds and node.started_at:
            end = node.ended_at or bounds[1]
            x = _LABEL_WIDTH + (node.started_at - bounds[0]).total_seconds() * scale
            bar = max((end - node.started_at).total_seconds() * scale, 3.0)
            dashed = ' stroke-dasharray="4 3" fill-opacity="0.55"' if not node.ended_at else ""
            caption = _bar_caption(node)
            caption_x, anchor = x + bar + 4, ""
            if caption_x + len(caption) * _CAPTION_UNITS_PER_CHAR > width:  # left of the row
                caption_x, anchor = (x if left is None else left) - 4, ' text-anchor="end"'
            out.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{bar:.1f}" height="{_ROW_HEIGHT - 8}" '
                f'rx="3" fill="{_colour(node.status)}" stroke="{_colour(node.status)}" '
                f'class="bar"{dashed}/>'
                f'<text x="{caption_x:.1f}" y="{y + 17}" class="after"{anchor}>'
                f"{html.escape(caption)}</text>"
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
    """One entry per status some node has, in a fixed order."""
    order = [NODE_COMPLETED, NODE_FAILED, NODE_LOST, NODE_RUNNING, NODE_NOT_RUN]
    present = {n.status for n in summary.nodes}
    shown = [s for s in order if s in present] + sorted(present - set(order))
    items = [
        f'<span class="key"><span class="swatch" style="background:{_colour(s)}"></span>'
        f"{html.escape(s)} ({summary.count(s)})</span>"
        for s in shown
    ]
    if any(_process_start(n) for n in summary.nodes):
        items.append(
            f'<span class="key"><span class="swatch" style="background:{_STARTUP_COLOUR}">'
            "</span>process start-up</span>"
        )
    return '<p class="legend">' + "".join(items) + "</p>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:12px;color:#212121}
h1{font-size:18px;margin:0 0 4px}
p{margin:4px 0;font-size:13px}
.outcome-FAILED,.outcome-KILLED{color:#c62828}
.outcome-FINISHED{color:#2e7d32}
.error{white-space:pre-wrap;background:#fdecea;border-left:4px solid #c62828;padding:6px 8px;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;max-height:8em;overflow:auto}
.legend .key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
svg{display:block;height:auto}
svg .label{font-size:13px;text-anchor:end;fill:#212121}
svg .label.failed{fill:#c62828;font-weight:bold}
svg .tick{font-size:12px;text-anchor:middle;fill:#616161}
svg .caption{font-size:12px;fill:#757575}
svg .none{font-size:12px;fill:#9e9e9e;font-style:italic}
svg .after{font-size:12px;fill:#424242}
svg .grid{stroke:#e0e0e0;stroke-width:1}
"""


def title_of(summary: RunSummary) -> str:
    """``<project> · pipeline <name>``, as much of it as is known."""
    parts = [summary.project] if summary.project else []
    parts.append(f"pipeline {summary.pipeline or '(unknown)'}")
    return " · ".join(parts)


def _when(bounds: tuple[datetime, datetime]) -> str:
    start, end = bounds
    day = start.strftime("%Y-%m-%d")
    same_day = end.date() == start.date()
    until = end.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")
    span = format_duration((end - start).total_seconds())
    return f"{day}, {start.strftime('%H:%M:%S')} to {until} UTC ({span})"


def render_timeline(summary: RunSummary) -> str:
    """``timeline.html``: a Gantt chart of the nodes, self-contained (no script, no URL)."""
    bounds = _bounds(summary.nodes)
    title = title_of(summary)
    status = html.escape(summary.status)
    header = [f'<h1>{html.escape(title)}: <span class="outcome-{status}">{status}</span></h1>']
    if summary.failed_node:
        header.append(f"<p>Failed node: <b>{html.escape(summary.failed_node)}</b></p>")
    if summary.error:
        header.append(f'<div class="error">{html.escape(summary.error)}</div>')
    if bounds:
        header.append(f"<p>{html.escape(_when(bounds))}</p>")
    if summary.job_id or summary.job_name:
        header.append(
            f"<p>Job {html.escape(summary.job_name or '')} "
            f"({html.escape(summary.job_id or 'no id')})</p>"
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}: timeline</title>"
        f"<style>{_STYLE}</style></head><body>"
        + "".join(header)
        + _legend(summary)
        + _svg(summary)
        + "</body></html>\n"
    )
