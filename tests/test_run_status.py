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


AIRFLOW = {
    "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-12-02T10:00:00+00:00",
    "AIRFLOW_CTX_DAG_ID": "dag",
}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # A stock kedro-airflow task: Airflow's DAG run is the job, its DAG the job's name;
        # run ids are unique only within a DAG, so the DAG id is part of the job id.
        (AIRFLOW, ("job", f"dag/{AIRFLOW['AIRFLOW_CTX_DAG_RUN_ID']}", "dag")),
        ({"AIRFLOW_CTX_DAG_RUN_ID": "r1"}, ("job", "r1", None)),
        # What the user set wins over what the orchestrator exports.
        ({**AIRFLOW, "KEDRO_CONFIG_RUN_ID": "mine"}, ("job", "mine", None)),
        (
            {**AIRFLOW, "KEDRO_CONFIG_JOB_NAME": "nightly"},
            ("job", f"dag/{AIRFLOW['AIRFLOW_CTX_DAG_RUN_ID']}", "nightly"),
        ),
        (
            {**AIRFLOW, "MLFLOW_RUN_ID": "abc"},
            ("resume", f"dag/{AIRFLOW['AIRFLOW_CTX_DAG_RUN_ID']}", "dag"),
        ),
    ],
)
def test_an_orchestrators_own_run_id_is_the_job_id_when_none_is_given(env, expected):
    source = RunSource.from_env(env)
    assert (source.mode, source.job_id, source.job_name) == expected
    if source.mode == "job" and env == AIRFLOW:
        assert source.describe().startswith(
            "AIRFLOW_CTX_DAG_ID/AIRFLOW_CTX_DAG_RUN_ID=dag/manual__"
        )
