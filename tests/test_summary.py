"""The run summary a user reads: the description markdown and the self-contained timeline."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from html.parser import HTMLParser

from kedro_vertex_hooks.lifecycle import mark_lost
from kedro_vertex_hooks.naming import (
    MAX_TAG_VALUE_LENGTH,
    METRIC_NODE_COMPLETED,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    RECORD_METRICS,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_NODE_HOST,
    TAG_PIPELINE,
    node_key,
)
from kedro_vertex_hooks.records import start_points
from kedro_vertex_hooks.summary import (
    RunSummary,
    format_duration,
    format_memory,
    render_note,
    run_page_url,
)
from kedro_vertex_hooks.timeline import STATUS_COLOURS, render_timeline, tick_label
from kedro_vertex_hooks.tracking_client import Metric
from tests.support.tracked import note_node_rows, note_node_table

HOSTILE = "score|<script>alert(1)</script>*x*"  # a node name that must stay inert


START = datetime(2026, 11, 26, 6, 0, tzinfo=timezone.utc).timestamp()


def at(clock: str) -> float:
    """``"MM:SS.mmm"`` after 06:00 UTC, as Unix time."""
    minutes, seconds = clock.split(":")
    return START + int(minutes) * 60 + float(seconds)


@dataclass
class Node:
    """A node as the hooks record it: start, outcome at ``end``, optional measures."""

    name: str
    status: str  # completed, failed or running
    start: str | None
    end: str | None
    host: str  # recorded for a failed node only, as the hooks do
    duration_s: float | None = None
    peak_rss_mb: float | None = None
    startup_s: float | None = None


def summary_of(
    status: str, pipeline: list[str], nodes: list[Node], tags: dict | None = None
) -> RunSummary:
    """The summary of a run holding what the hooks write for ``nodes`` (see records.py)."""
    all_tags = dict(tags or {})
    points: list[Metric] = []
    for node in nodes:
        position = pipeline.index(node.name)
        if node.status == "failed":
            all_tags[node_key(TAG_NODE_HOST, node.name)] = node.host
        if node.start:
            points += start_points(position, at(node.start), node.startup_s)
        if node.end and node.status in ("completed", "failed"):
            stamp = int(at(node.end) * 1000)
            outcome = 1.0 if node.status == "completed" else 0.0
            points.append(Metric(METRIC_NODE_COMPLETED, outcome, stamp, position))
            for key, value in (
                (METRIC_NODE_DURATION, node.duration_s),
                (METRIC_NODE_PEAK_RSS, node.peak_rss_mb),
            ):
                if value is not None:
                    points.append(Metric(key, value, stamp, position))
    history = {key: [p for p in points if p.key == key] for key in RECORD_METRICS}
    return RunSummary.from_run_data(status, all_tags, history, pipeline)


def failed_run() -> RunSummary:
    """prepare ran first, two branches in parallel, one failed, one never ran."""
    tags = {
        TAG_FAILED_NODE: HOSTILE,
        TAG_ERROR: "ValueError: bad | input\n```\n<b>not bold</b>",
        TAG_PIPELINE: "__default__",
        TAG_JOB_ID: "8123",
        TAG_JOB_NAME: "sample-pipeline-20261126",
    }
    nodes = [
        Node("train_b", "completed", "00:05.000", "00:20.500", "pod-b", 75.0, 2048.0),
        Node("prepare", "completed", "00:01.000", "00:04.000", "pod-a", 2.94, 310.4),
        Node(HOSTILE, "failed", "00:05.200", "00:09.000", "pod-c"),
    ]
    return summary_of("FAILED", ["prepare", HOSTILE, "train_b", "report"], nodes, tags)


def test_note_says_outcome_failed_node_and_error_in_its_first_line():
    note = render_note(failed_run())
    lines = note.splitlines()

    assert lines[0].startswith("**FAILED**: the pipeline failed at node **score\\|")
    assert lines[0].endswith(": ValueError: bad \\| input  ")  # first line of the error only
    assert lines[1].startswith("2 of 4 nodes completed, 1 failed, 1 not run · pipeline")
    assert "job sample\\-pipeline\\-20261126 · job id 8123" in lines[1]
    clean = summary_of(
        "FINISHED", ["prepare"], [Node("prepare", "completed", "00:01.000", "00:04.000", "h")]
    )
    assert render_note(clean).splitlines()[:2] == [
        "**FINISHED**: the pipeline succeeded  ",
        "1 of 1 nodes completed",
    ]
    # No node failed, so no node recorded a host: the table has no host column.
    assert note_node_table(render_note(clean))[0].split()[-2:] == ["peak", "memory"]


def test_note_lists_nodes_in_run_order_in_an_aligned_table():
    note = render_note(failed_run())
    table = note_node_table(note)
    rows = note_node_rows(note)

    assert table[0].split() == ["#", "node", "status", "started", "duration", "peak", "memory",
                                "host"]  # fmt: skip
    assert [row[2] for row in rows] == ["completed", "completed", "failed", "not run"]
    assert rows[0][:2] == ["1", "prepare"] and rows[1][1] == "train_b" and rows[3][1] == "report"
    assert rows[0][3:] == ["06:00:01", "2.9 s", "310 MB"]
    assert rows[1][3:] == ["06:00:05", "1 min 15 s", "2.0 GB"]
    assert rows[2][3:] == ["06:00:05", "3.8 s", "pod-c"]  # a failed node: end minus start
    status_column = table[0].index("status")
    assert all(line[status_column - 2 : status_column] == "  " for line in table)  # aligned


def test_note_keeps_node_names_and_the_error_verbatim_inside_code_blocks():
    note = render_note(failed_run())
    outside = re.sub(r"^(`{3,})text$.*?^\1$", "", note, flags=re.MULTILINE | re.DOTALL)

    assert "<script>" not in outside  # escaped wherever markdown would interpret it
    assert HOSTILE in note_node_table(note)[3]  # verbatim in the monospaced block
    fence = re.search(r"^(`{4,})text$", note, re.MULTILINE)
    assert fence is not None  # longer than the ``` inside the error, so the error cannot end it
    block = note.split(fence.group(0) + "\n", 1)[1].split("\n" + fence.group(1), 1)[0]
    assert block == "ValueError: bad | input\n```\n<b>not bold</b>"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data):
        self.text.append(data)


def test_timeline_is_self_contained_and_escapes_user_text():
    page = render_timeline(failed_run())
    parsed = _Collector()
    parsed.feed(page)

    assert "script" not in parsed.tags and "link" not in parsed.tags
    assert not any(
        name in {"src", "href"} or name.startswith("on") for name, _ in parsed.attributes
    )
    assert "://" not in page and "url(" not in page and "@import" not in page
    assert HOSTILE in "".join(parsed.text)  # shown as text, never as markup
    assert "ValueError: bad | input" in "".join(parsed.text)


def svg_of(page: str) -> ET.Element:
    return ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])


def bars_of(svg: ET.Element) -> list[ET.Element]:
    return [rect for rect in svg.iter("rect") if rect.get("class") == "bar"]


def test_each_steps_process_start_up_is_drawn_before_its_node():
    """Where the time between nodes goes: each node's process starting (~5 s per step)."""
    nodes = [
        Node("a", "completed", "00:05.000", "00:06.000", "h", startup_s=5.0),
        Node("b", "completed", "00:11.000", "00:12.000", "h", startup_s=4.0),
    ]
    page = render_timeline(summary_of("FINISHED", ["a", "b"], nodes))
    svg = svg_of(page)
    startups = [rect for rect in svg.iter("rect") if rect.get("class") == "startup"]
    bars = bars_of(svg)

    assert len(startups) == len(bars) == 2
    for startup, bar in zip(startups, bars, strict=True):  # each ends where its node starts
        end = float(startup.get("x")) + float(startup.get("width"))
        assert abs(end - float(bar.get("x"))) < 0.2
    first_process, second_process = (float(r.get("x")) for r in startups)
    assert first_process < float(bars[0].get("x")) < second_process  # time starts at 06:00
    assert "process start-up" in page and "time since the first process started" in page
    assert "process start-up: 5.0 s" in page  # in the node's tooltip


def test_a_caption_with_no_room_after_its_bar_stands_before_the_start_up_not_over_it():
    nodes = [
        Node("a", "completed", "00:05.000", "00:06.000", "h", startup_s=5.0),
        Node("b", "failed", "00:40.000", "00:41.000", "h", startup_s=4.0),  # at the right edge
    ]
    svg = svg_of(render_timeline(summary_of("FAILED", ["a", "b"], nodes)))
    startup = [rect for rect in svg.iter("rect") if rect.get("class") == "startup"][1]
    caption = [text for text in svg.iter("text") if text.get("class") == "after"][1]

    assert caption.text == "failed, 1.0 s" and caption.get("text-anchor") == "end"
    assert float(caption.get("x")) < float(startup.get("x"))


def test_timeline_draws_one_bar_per_started_node_coloured_by_status_with_a_legend():
    summary = failed_run()
    page = render_timeline(summary)
    svg = svg_of(page)
    bars = bars_of(svg)

    assert [bar.get("fill") for bar in bars] == [
        STATUS_COLOURS["completed"],
        STATUS_COLOURS["completed"],
        STATUS_COLOURS["failed"],
    ]
    # prepare 06:00:01-06:00:04 and train_b 06:00:05-06:00:20.5 on one time scale
    prepare, train_b, _ = (float(bar.get("width")) for bar in bars)
    assert abs(train_b / prepare - 15.5 / 3.0) < 0.05
    assert float(bars[1].get("x")) > float(bars[0].get("x")) + float(bars[0].get("width"))
    labels = [text.text for text in svg.iter("text") if "label" in (text.get("class") or "")]
    assert labels[-1] == "report"
    legend = page[page.index('class="legend"') : page.index("<svg")]
    for status in ("completed (2)", "failed (1)", "not run (1)"):
        assert status in legend
    assert "lost" not in legend and "running" not in legend  # no entries for nobody


def test_timeline_fits_its_container_and_marks_the_failed_row():
    summary = failed_run()
    page = render_timeline(summary)
    svg = svg_of(page)

    assert svg.get("width") == "100%" and svg.get("viewBox", "").startswith("0 0 ")
    view_width = float(svg.get("viewBox").split()[2])
    assert view_width <= 870  # MLflow's artifact pane: no scaling below ~0.9 at 800 px
    failed_rows = [rect for rect in svg.iter("rect") if rect.get("class") == "failed-row"]
    assert len(failed_rows) == 1 and float(failed_rows[0].get("width")) == view_width
    failed_label = [t for t in svg.iter("text") if t.get("class") == "label failed"]
    assert [t.text for t in failed_label] == [HOSTILE[:27] + "…"]  # the tooltip has it whole
    assert "failed, 3.8 s" in [t.text for t in svg.iter("text") if t.get("class") == "after"]
    assert "2026-11-26, 06:00:01 to 06:00:20 UTC (19.5 s)" in page
    assert "<title>pipeline __default__: timeline</title>" in page


def test_axis_ticks_say_exactly_where_they_stand():
    assert [tick_label(s) for s in (0, 15, 60, 75, 90, 3600, 5400)] == [
        "0 s", "15 s", "1 min", "1 min 15 s", "1 min 30 s", "1 h", "1 h 30 min",
    ]  # fmt: skip


def test_a_node_without_end_is_drawn_to_the_end_of_the_chart_and_named_by_status():
    nodes = [
        Node("a", "completed", "00:00.000", "00:10.000", "h"),
        Node("b", "running", "00:02.000", None, "h"),
    ]
    found = summary_of("KILLED", ["a", "b"], nodes)
    summary = replace(found, nodes=tuple(mark_lost(found.nodes)))  # as finalize does
    page = render_timeline(summary)
    svg = svg_of(page)
    first_bar, lost_bar = bars_of(svg)

    assert lost_bar.get("fill") == STATUS_COLOURS["lost"]
    assert lost_bar.get("stroke-dasharray")
    assert abs(float(lost_bar.get("width")) / float(first_bar.get("width")) - 0.8) < 0.01
    assert "lost" in [text.text for text in svg.iter("text") if text.get("class") == "after"]


def test_a_run_without_any_node_data_still_renders():
    summary = summary_of("KILLED", ["a", "b"], [])

    assert "0 of 2 nodes completed, 2 not run" in render_note(summary)
    page = render_timeline(summary)
    assert page.count('class="none"') == 2


def test_nodes_with_illegal_key_characters_are_matched_the_way_the_hooks_wrote_them():
    name = "train model (v2)/\u00e9t\u00e9"
    summary = summary_of(
        "FINISHED", [name], [Node(name, "completed", "00:00.000", "00:01.000", "h")]
    )

    assert [(n.name, n.status) for n in summary.nodes] == [(name, "completed")]
    failed = summary_of("FAILED", [name], [Node(name, "failed", "00:00.000", "00:01.000", "h")])
    assert [n.host for n in failed.nodes] == ["h"]  # its host tag found under the legal key


def test_the_note_of_a_huge_pipeline_with_a_huge_error_fits_in_one_mlflow_tag():
    names = [f"node_{i:03d}_with_a_rather_long_descriptive_name" for i in range(400)]
    nodes = [
        Node(name, "completed", f"{i // 60:02d}:{i % 60:02d}.000", f"{i // 60:02d}:59.000", "pod")
        for i, name in enumerate(names)
    ]
    tags = {TAG_ERROR: "RuntimeError: " + "x" * 7900}
    note = render_note(summary_of("FAILED", names, nodes, tags))

    assert len(note) <= MAX_TAG_VALUE_LENGTH
    shown = len(note_node_rows(note))
    assert 10 < shown < 400
    assert f"... and {400 - shown} more node(s): see timeline.html." in note
    assert "...[truncated]" in note  # the error block, cut and marked


def test_durations_and_memory_read_like_a_person_wrote_them():
    assert [format_duration(s) for s in (0.012, 2.94, 75, 3725)] == [
        "12 ms",
        "2.9 s",
        "1 min 15 s",
        "1 h 02 min",
    ]
    assert [format_memory(m) for m in (310.4, 2048.0)] == ["310 MB", "2.0 GB"]


def test_the_run_page_link_opens_the_model_training_view_and_holds_no_credentials():
    page = run_page_url("https://user:s3cret@mlflow.example.com/", "7", "abc123")

    assert page == (
        "https://mlflow.example.com/#/experiments/7/runs/abc123?workflowType=machine_learning"
    )
    assert run_page_url("http://127.0.0.1:5000/mlflow", "1", "r", "artifacts") == (
        "http://127.0.0.1:5000/mlflow/#/experiments/1/runs/r/artifacts"
        "?workflowType=machine_learning"
    )
    assert run_page_url("http://[::1]:8080", "1", "r").startswith("http://[::1]:8080/#/")
    assert run_page_url("sqlite:///mlflow.db", "1", "r") is None  # no UI to link to
    assert run_page_url("databricks", "1", "r") is None
