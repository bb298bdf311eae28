"""What a tracking server holds, read the way a user would: every run, artifact contents."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kedro_vertex_hooks.naming import METRIC_NODE_COMPLETED, METRIC_NODE_STARTED
from tests.support.project import EXPECTED_PARAMS, SAMPLE_NODES


def every_run_id(client: Any) -> set[str]:
    """Ids of all runs in all experiments, deleted ones included (so no extra run hides)."""
    from mlflow.entities import ViewType

    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids: set[str] = set()
    for experiment in experiments:
        runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
        ids.update(run.info.run_id for run in runs)
    return ids


def artifact_json(client: Any, run_id: str, path: str, download_to: Path) -> Any:
    """Download one artifact of the run through the server and parse it as JSON."""
    download_to.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(run_id, path, str(download_to))
    return json.loads(Path(local).read_text(encoding="utf-8"))


def local_json(project_root: Path, name: str) -> Any:
    """A dataset file the project wrote, to compare with what reached the run."""
    return json.loads((project_root / "data" / f"{name}.json").read_text(encoding="utf-8"))


def pipeline_order(pipeline: str = "__default__") -> list[str]:
    """sample_project's nodes in the order Kedro lists its pipeline: a node's position in it
    is the step of the node's points in the run's record metrics."""
    from sample_project.pipeline_registry import register_pipelines

    return [node.name for node in register_pipelines()[pipeline].nodes]


def node_statuses(client: Any, run_id: str, nodes: Sequence[str] | None = None) -> dict[str, str]:
    """Each node's status as the run holds it, read with MLflow's own client: the latest
    ``kedro.node_completed`` point at the node's position (1 completed, 0 failed), or
    ``running`` for a node whose latest start has no outcome after it. Nodes with nothing
    recorded are absent."""
    order = list(nodes) if nodes is not None else pipeline_order()
    outcomes = _latest_points(client, run_id, METRIC_NODE_COMPLETED)
    starts = _latest_points(client, run_id, METRIC_NODE_STARTED)
    found: dict[str, str] = {}
    for position, name in enumerate(order):
        outcome, start = outcomes.get(position), starts.get(position)
        if outcome is not None and (start is None or outcome.timestamp >= start.timestamp):
            found[name] = "completed" if outcome.value == 1 else "failed"
        elif start is not None:
            found[name] = "running"
    return found


def by_node(
    client: Any, run_id: str, key: str, nodes: Sequence[str] | None = None
) -> dict[str, float]:
    """The latest value of a record metric (e.g. ``kedro.node_duration_s``) for each node
    that has one."""
    order = list(nodes) if nodes is not None else pipeline_order()
    points = _latest_points(client, run_id, key)
    return {name: points[i].value for i, name in enumerate(order) if i in points}


def _latest_points(client: Any, run_id: str, key: str) -> dict[int, Any]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda p: p.timestamp)
    return {point.step: point for point in points}


def assert_finished_with_every_node_completed(client: Any, run_id: str) -> None:
    """A sample_project run as a user expects it at the end: FINISHED, its params, every node
    ``completed``."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, value in EXPECTED_PARAMS.items():
        assert run.data.params[key] == value, key
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")


def note_node_table(note: str) -> list[str]:
    """The lines of the run description's node table (a fenced, monospaced block)."""
    after = note.split("**Nodes**", 1)[1]
    fence = re.search(r"^(`{3,})text$", after, re.MULTILINE)
    assert fence is not None, after
    block = after.split(fence.group(0) + "\n", 1)[1]
    return block.split("\n" + fence.group(1), 1)[0].splitlines()


def note_node_rows(note: str) -> list[list[str]]:
    """The cells of the node table's rows (columns are apart by two or more spaces)."""
    rows = note_node_table(note)[1:]
    return [re.split(r" {2,}", line.strip()) for line in rows if not line.startswith("...")]
