"""The run-status rules and the run-source order, as pure functions (no server needed)."""

from __future__ import annotations

import pytest
from kedro.pipeline import node, pipeline

from kedro_vertex_hooks.naming import METRIC_NODE_COMPLETED
from kedro_vertex_hooks.pipeline_shape import has_node_downstream, holds_every_leaf
from kedro_vertex_hooks.records import Outcomes
from kedro_vertex_hooks.resolve import RunSource, job_run_name
from kedro_vertex_hooks.status import step_end_status, step_start_status, was_ended_early
from kedro_vertex_hooks.tracking_client import Metric

NODE_COUNT = 3  # positions 0, 1, 2


def outcomes(*points: tuple[int, float]) -> Outcomes:
    """Outcomes from (position, value) points, in the order they were logged."""
    return Outcomes.from_points(
        Metric(METRIC_NODE_COMPLETED, value, timestamp, position)
        for timestamp, (position, value) in enumerate(points)
    )


def test_run_stays_running_while_a_node_of_the_pipeline_has_not_completed():
    assert step_end_status(outcomes((0, 1), (1, 1)), NODE_COUNT) is None


def test_run_finishes_when_every_node_of_the_pipeline_completed():
    assert step_end_status(outcomes((0, 1), (1, 1), (2, 1)), NODE_COUNT) == "FINISHED"


def test_failed_is_sticky_even_when_every_node_completed_later():
    retried = outcomes((0, 1), (1, 0), (1, 1), (2, 1))
    assert retried.every_node_completed(NODE_COUNT)
    assert step_end_status(retried, NODE_COUNT) == "FAILED"


def test_a_failure_outside_any_node_fails_the_run():
    assert step_end_status(outcomes((0, 1), (1, 1), (2, 1), (3, 0)), NODE_COUNT) == "FAILED"


def test_a_run_ended_early_by_someone_else_is_put_back_to_running():
    assert was_ended_early("FINISHED") and was_ended_early("KILLED")
    assert not was_ended_early("RUNNING") and not was_ended_early("FAILED")
    assert step_start_status(outcomes((0, 1)), NODE_COUNT) == "RUNNING"
    # ... unless the pipeline really is complete (a node re-run into a finished run).
    assert step_start_status(outcomes((0, 1), (1, 1), (2, 1)), NODE_COUNT) is None


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


def test_a_jobs_run_is_named_with_its_distinguishing_part_first():
    airflow_id = "kedro-sample/manual__2026-12-03T06:00:00+00:00"
    assert job_run_name(airflow_id, "kedro-sample") == (
        "manual__2026-12-03T06:00:00+00:00 · kedro-sample"
    )
    assert job_run_name("8123", "sample-pipeline-20261203") == "sample-pipeline-20261203"
    vertex = "sample-project-20261203080015"  # Vertex AI's job name: <pipeline>-<timestamp>
    assert job_run_name("8123", vertex) == "2026-12-03 08:00:15 · sample-project"
    kfp_local = "sample-project-2026-12-03-08-00-15-087906"
    assert job_run_name("8123", kfp_local) == "2026-12-03 08:00:15 · sample-project"
    assert job_run_name("8123", "train-v2") == "train-v2"
    assert job_run_name("8123", None) is None


def _identity(*values):
    return values[0] if values else None


# prepare -> a -> b -> join, prepare -> c -> join; "report" reads "a_out" through another
# transcoding of it; "side" depends on nothing.
PIPELINE = pipeline(
    [
        node(_identity, "params:seed", "raw", name="prepare"),
        node(_identity, "raw", "a_out@pandas", name="a"),
        node(_identity, "a_out@pandas", "b_out", name="b"),
        node(_identity, "raw", "c_out", name="c"),
        node(_identity, ["b_out", "c_out"], "joined", name="join"),
        node(_identity, "a_out@spark", "report", name="report"),
        node(_identity, "params:seed", "side_out", name="side"),
    ]
)


@pytest.mark.parametrize(
    ("step", "downstream"),
    [
        (["prepare"], True),
        (["b"], True),  # join
        (["a", "b"], True),  # report reads a's output under another transcoding
        (["a", "b", "report"], True),  # join, through b
        (["join"], False),
        (["report"], False),
        (["side"], False),
        (["c", "join"], False),
        ([node.name for node in PIPELINE.nodes], False),
    ],
)
def test_a_step_may_finish_the_pipeline_only_with_no_node_downstream(step, downstream):
    assert has_node_downstream([PIPELINE], step) is downstream
    # the same answer as Kedro's own graph walk
    outside = [n.name for n in PIPELINE.from_nodes(*step).nodes if n.name not in step]
    assert bool(outside) is downstream


@pytest.mark.parametrize(
    ("step", "every_leaf"),
    [
        (["join"], False),  # report and side are leaves too: their steps may end with it
        (["join", "report", "side"], True),
        (["c", "join", "report", "side"], True),
        (["prepare"], False),
    ],
)
def test_only_a_step_holding_every_leaf_runs_after_every_other_node(step, every_leaf):
    assert holds_every_leaf([PIPELINE], step) is every_leaf
    # the same answer as Kedro's own graph walk: a leaf is a node nothing depends on
    leaves = {n.name for n in PIPELINE.nodes if len(PIPELINE.from_nodes(n.name).nodes) == 1}
    assert (leaves <= set(step)) is every_leaf
