"""``timeline.html``: a self-contained Gantt chart of the run's nodes (inline SVG and CSS).

One bar per node from its start to its end, coloured by status; nothing is fetched from the
network, so MLflow's artifact viewer shows it as is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

from kedro_vertex_hooks.naming import NODE_COMPLETED, NODE_FAILED, NODE_LOST, NODE_RUNNING
from kedro_vertex_hooks.summary import (
    NODE_NOT_RUN,
    NodeRecord,
    RunSummary,
    format_duration,
    format_memory,
)

STATUS_COLOURS = {
    NODE_COMPLETED: "#2e7d32",
    NODE_FAILED: "#c62828",
    NODE_LOST: "#ef6c00",
    NODE_RUNNING: "#1565c0",
    NODE_NOT_RUN: "#9e9e9e",
}
_OTHER_COLOUR = "#6a1b9a"  # a status this version does not know

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
