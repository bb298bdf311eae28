"""start-run and finalize: the terminal status rules, idempotence, lost nodes, errors.

The rules are checked as pure functions; the commands run as real `kedro vertex-hooks ...`
processes in a copy of sample_project against a real MLflow server.
"""

from __future__ import annotations

import json
import time

import pytest

from kedro_vertex_hooks.lifecycle import (
    TIMELINE_ARTIFACT,
    normalise_state,
    plan_finalize,
    start_run,
    terminal_status,
)
from kedro_vertex_hooks.naming import (
    RECORD_METRICS,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_RUN_NOTE,
)
from kedro_vertex_hooks.records import end_points, start_points
from kedro_vertex_hooks.summary import NodeRecord, run_page_url
from tests.support.mlflow_server import free_port
from tests.support.project import base_env
from tests.support.tracked import node_statuses

EXPERIMENT = "sample_project"  # sample_project's package name: where its runs go

STDERR_LOGGING = """
version: 1
disable_existing_loggers: false
handlers:
  stderr: {class: logging.StreamHandler, stream: ext://sys.stderr}
root: {handlers: [stderr], level: INFO}
"""


def nodes(*statuses: str) -> list[NodeRecord]:
    return [NodeRecord(name=f"n{i}", status=status) for i, status in enumerate(statuses)]


@pytest.mark.parametrize(
    ("current", "statuses", "state", "failure_tag", "expected"),
    [
        ("RUNNING", ("completed", "completed"), "SUCCEEDED", False, "FINISHED"),
        ("FINISHED", ("completed", "completed"), None, False, "FINISHED"),
        ("RUNNING", ("completed", "failed"), "SUCCEEDED", False, "FAILED"),
        ("RUNNING", ("completed", "completed"), "FAILED", False, "FAILED"),
        ("FAILED", ("completed", "completed"), "SUCCEEDED", False, "FAILED"),
        ("RUNNING", ("completed", "completed"), "SUCCEEDED", True, "FAILED"),
        ("RUNNING", ("completed", "completed"), "CANCELLED", False, "KILLED"),
        ("RUNNING", ("completed", "not run"), "SUCCEEDED", False, "KILLED"),
        ("RUNNING", ("completed", "lost"), None, False, "KILLED"),
        ("RUNNING", ("failed", "lost"), "CANCELLED", False, "FAILED"),
    ],
)
def test_terminal_status_never_says_finished_over_a_failure(
    current, statuses, state, failure_tag, expected
):
    assert terminal_status(current, nodes(*statuses), state, failure_tag) == expected


def test_orchestrator_states_are_read_case_insensitively_and_unknown_ones_ignored():
    assert [normalise_state(s) for s in ("succeeded", " FAILED ", "Cancelled")] == [
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    ]
    assert normalise_state("EXPLODED") is None
    assert normalise_state("") is None


def test_a_running_node_becomes_lost_and_planning_again_changes_nothing():
    # Node a (position 0) started and completed; b (1) started, its process died; c never ran.
    points = [
        *start_points(0, 1_700_000_000.0, 2.0),
        *end_points(0, True, 1.5, 120.0),
        *start_points(1, 1_700_000_010.0, 2.0),
    ]
    history = {key: [p for p in points if p.key == key] for key in RECORD_METRICS}
    first = plan_finalize("RUNNING", {}, history, ["a", "b", "c"], "FAILED")

    assert first.status == "FAILED" and first.change_status
    assert first.lost_nodes == ("b",)
    assert "1 lost, 1 not run" in first.tags[TAG_RUN_NOTE]
    assert [n.status for n in first.summary.nodes] == ["completed", "lost", "not run"]

    second = plan_finalize("FAILED", first.tags, history, ["a", "b", "c"], "FAILED")
    assert second.tags == {} and not second.change_status
    assert second.timeline_html == first.timeline_html


# -- real commands against a real server --------------------------------------------------
def env_for(server, tmp_path, **extra: str) -> dict[str, str]:
    logging_yml = tmp_path / "logging.yml"
    logging_yml.write_text(STDERR_LOGGING)
    return base_env(MLFLOW_TRACKING_URI=server.uri, KEDRO_LOGGING_CONFIG=str(logging_yml), **extra)


def test_start_run_twice_with_one_job_id_gives_one_running_run(
    client, mlflow_server, project, tmp_path
):
    env = env_for(mlflow_server, tmp_path, KEDRO_CONFIG_RUN_ID="job-start-twice")
    output = tmp_path / "outputs" / "run_id"
    first = project.run(
        ["vertex-hooks", "start-run", "--job-name", "pipeline-20261126", "--output", str(output)],
        env,
    )
    second = project.run(["vertex-hooks", "start-run", "--job-name", "pipeline-20261126"], env)

    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    run_id = output.read_text()
    assert first.stdout == second.stdout == run_id + "\n"  # nothing else on stdout
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "pipeline-20261126"
    assert run.data.tags[TAG_JOB_ID] == "job-start-twice"
    assert run.data.tags[TAG_JOB_NAME] == "pipeline-20261126"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    tagged = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.{TAG_JOB_ID} = 'job-start-twice'"
    )
    assert [r.info.run_id for r in tagged] == [run_id]


def test_a_step_killed_during_a_node_is_lost_after_finalize_and_finalize_is_idempotent(
    client, mlflow_server, project, tmp_path
):
    run_id = start_run(client, EXPERIMENT, "job-killed", "pipeline-killed").run_id
    (project.root / "data" / "report.json").write_text(json.dumps({"choice": {"best": "tree"}}))
    env = env_for(mlflow_server, tmp_path, MLFLOW_RUN_ID=run_id)
    step = project.start(["run", "--nodes", "quality_gate", "--params", "failure.sleep_s=120"], env)
    deadline = time.monotonic() + 90
    while node_statuses(client, run_id).get("quality_gate") != "running":
        assert step.poll() is None, step.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the node never reported running"
        time.sleep(0.2)
    step.kill()  # SIGKILL: no hook, no atexit handler runs
    step.communicate(timeout=30)
    assert client.get_run(run_id).info.status == "RUNNING"

    closed = project.run(["vertex-hooks", "finalize", "--run-id", run_id], env)

    assert closed.returncode == 0, closed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert TAG_FAILED_NODE not in run.data.tags
    note = run.data.tags[TAG_RUN_NOTE]
    assert note.startswith("**KILLED**") and "**Lost:** quality\\_gate" in note
    assert [a.path for a in client.list_artifacts(run_id)] == [TIMELINE_ARTIFACT]
    page = run_page_url(mlflow_server.uri, run.info.experiment_id, run_id)
    assert f"Open it at: {page}" in closed.stderr.splitlines()  # the link a person follows

    again = project.run(["vertex-hooks", "finalize", "--run-id", run_id], env)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing changed" in again.stderr
    rerun = client.get_run(run_id)
    assert (rerun.info.status, rerun.info.end_time) == (run.info.status, run.info.end_time)
    assert rerun.data.tags == run.data.tags and rerun.data.metrics == run.data.metrics


def test_finalize_of_a_run_that_does_not_exist_fails_in_one_line(mlflow_server, project, tmp_path):
    env = env_for(mlflow_server, tmp_path)
    result = project.run(["vertex-hooks", "finalize", "--run-id", "0123456789abcdef"], env)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "0123456789abcdef does not exist" in error[0]
    assert mlflow_server.uri in error[0]


def test_start_run_without_a_tracking_server_fails_in_one_line(project, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    logging_yml = tmp_path / "logging.yml"
    logging_yml.write_text(STDERR_LOGGING)
    env = base_env(
        MLFLOW_TRACKING_URI=dead,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        KEDRO_LOGGING_CONFIG=str(logging_yml),
    )
    result = project.run(
        ["vertex-hooks", "start-run", "--job-id", "job-dead", "--outage-budget", "0"], env
    )

    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "cannot be reached" in error[0]
