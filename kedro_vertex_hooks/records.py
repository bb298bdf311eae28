"""The per-node record: what a step writes for each node, and how it is read back.

Every node has a position: its index in the pipeline's node list, the same in every
container that runs the pipeline. A node's facts (start, start-up, duration, peak memory,
outcome) are points of a few metrics whose *step* is that position. MLflow shows a run with
the latest value of each metric only, so the run's row (``runs/get``, the runs list) stays the
same size whatever the number of nodes, while the metrics' histories hold the whole record:
only the steps that may finish the pipeline read one of them (the outcomes), and ``finalize``
reads them all. The histories are append-only, so a write that arrives late or twice can
never overwrite a newer fact. A failed node's error and host (strings) are tags of their own.

Pure functions over plain data, plus :func:`read_history`, the one read of them.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from kedro_vertex_hooks.naming import (
    METRIC_NODE_COMPLETED,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    METRIC_NODE_STARTED,
    METRIC_NODE_STARTUP,
)
from kedro_vertex_hooks.tracking_client import Metric

if TYPE_CHECKING:
    from kedro_vertex_hooks.tracking_client import TrackingClient

History = Mapping[str, Sequence[Metric]]  # metric key -> its points


def node_positions(pipeline_nodes: Iterable[str]) -> dict[str, int]:
    """Each node's position in its pipeline: the step of its record's points."""
    return {name: index for index, name in enumerate(dict.fromkeys(pipeline_nodes))}


def outside_position(positions: Mapping[str, int]) -> int:
    """The position recording a failure outside any node (an error between nodes)."""
    return len(positions)


def now_ms() -> int:
    return int(time.time() * 1000)


def process_started_at() -> float | None:
    """When this process started (Unix time), from Linux's /proc; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start, clock ticks
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime_s - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def start_points(position: int, started_at_s: float, startup_s: float | None) -> list[Metric]:
    """What a node's start writes: its start time, and how long its process took to get
    there (None when unknown)."""
    stamp = int(started_at_s * 1000)
    points = [Metric(METRIC_NODE_STARTED, round(started_at_s, 3), stamp, position)]
    if startup_s is not None:
        points.append(Metric(METRIC_NODE_STARTUP, round(startup_s, 3), stamp, position))
    return points


def end_points(
    position: int, completed: bool, duration_s: float | None, peak_rss_mb: float
) -> list[Metric]:
    """What a node's end writes: its outcome (1 completed, 0 failed), duration, memory."""
    stamp = now_ms()
    points = [
        Metric(METRIC_NODE_COMPLETED, 1.0 if completed else 0.0, stamp, position),
        Metric(METRIC_NODE_PEAK_RSS, peak_rss_mb, stamp, position),
    ]
    if duration_s is not None:
        points.append(Metric(METRIC_NODE_DURATION, round(duration_s, 3), stamp, position))
    return points


def latest_by_step(points: Iterable[Metric]) -> dict[int, Metric]:
    """The newest point of each step (a re-run node has several)."""
    latest: dict[int, Metric] = {}
    for point in points:
        known = latest.get(point.step)
        if known is None or point.timestamp >= known.timestamp:
            latest[point.step] = point
    return latest


class Outcomes(msgspec.Struct, frozen=True):
    """Which positions completed (their latest outcome) and whether anything ever failed."""

    completed: frozenset[int]
    any_failed: bool

    @classmethod
    def from_points(cls, points: Iterable[Metric]) -> Outcomes:
        points = list(points)
        completed = {s for s, p in latest_by_step(points).items() if p.value >= 1}
        return cls(frozenset(completed), any(point.value < 1 for point in points))

    def with_completed(self, positions: Iterable[int]) -> Outcomes:
        """These outcomes and the nodes at ``positions``, known completed (a step's own)."""
        return Outcomes(self.completed | frozenset(positions), self.any_failed)

    def every_node_completed(self, node_count: int) -> bool:
        return all(position in self.completed for position in range(node_count))


def read_history(client: TrackingClient, run_id: str, keys: Iterable[str]) -> dict[str, list]:
    """The full history of each metric in ``keys``."""
    return {key: list(client.get_metric_history(run_id, key)) for key in keys}


def read_outcomes(client: TrackingClient, run_id: str) -> Outcomes:
    return Outcomes.from_points(client.get_metric_history(run_id, METRIC_NODE_COMPLETED))
