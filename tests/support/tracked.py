"""What a tracking server holds, read the way a user would: every run, artifact contents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kedro_vertex_hooks.naming import TAG_NODE_STATUS, node_key
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


def assert_finished_with_every_node_completed(run: Any) -> None:
    """A sample_project run as a user expects it at the end: FINISHED, its params, every node
    ``completed``."""
    assert run.info.status == "FINISHED"
    for key, value in EXPECTED_PARAMS.items():
        assert run.data.params[key] == value, key
    for name in SAMPLE_NODES:
        assert run.data.tags[node_key(TAG_NODE_STATUS, name)] == "completed", name


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
