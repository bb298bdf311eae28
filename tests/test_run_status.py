"""The run-status rules and the run-source order, as pure functions (no server needed)."""

from __future__ import annotations

import pytest

from kedro_vertex_hooks.naming import TAG_FAILED_NODE, TAG_NODE_STATUS, node_key
from kedro_vertex_hooks.resolve import RunSource
from kedro_vertex_hooks.status import step_end_status

NODES = ["a", "b", "c"]


def statuses(**by_node: str) -> dict[str, str]:
    return {node_key(TAG_NODE_STATUS, node): status for node, status in by_node.items()}


def test_run_stays_running_while_a_node_of_the_pipeline_has_not_completed():
    assert step_end_status("RUNNING", statuses(a="completed", b="completed"), NODES) is None


def test_run_finishes_when_every_node_of_the_pipeline_completed():
    tags = statuses(a="completed", b="completed", c="completed")
    assert step_end_status("RUNNING", tags, NODES) == "FINISHED"


def test_failed_is_sticky_even_when_every_node_completed_later():
    tags = {**statuses(a="completed", b="completed", c="completed"), TAG_FAILED_NODE: "b"}
    assert step_end_status("FAILED", tags, NODES) is None
    assert step_end_status("RUNNING", tags, NODES) == "FAILED"


def test_a_run_ended_early_by_someone_else_is_put_back_to_running():
    assert step_end_status("FINISHED", statuses(a="completed"), NODES) == "RUNNING"


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({"MLFLOW_RUN_ID": "abc", "KEDRO_CONFIG_RUN_ID": "job"}, "resume"),
        ({"KEDRO_CONFIG_RUN_ID": "job"}, "job"),
        ({"KEDRO_CONFIG_RUN_ID": "  "}, "local"),
        ({}, "local"),
    ],
)
def test_run_source_order(env, mode):
    assert RunSource.from_env(env).mode == mode
