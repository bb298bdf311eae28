"""End to end: sample_project run one process per node, as Vertex AI runs it, into one run."""

from __future__ import annotations

import re
import time

import pytest
from mlflow.entities import ViewType

from kedro_vertex_hooks.naming import (
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    RECORD_METRICS,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_LATEST_NODE,
    TAG_NODE_ERROR,
    TAG_PARAM_CONFLICT,
    node_key,
)
from tests.support.generated_project import PACKAGE, generate_project
from tests.support.project import EXPECTED_PARAMS, SAMPLE_NODES, SAMPLE_STEPS, base_env
from tests.support.proxy import MlflowProxy, RequestRecord
from tests.support.tracked import (
    assert_finished_with_every_node_completed,
    by_node,
    every_run_id,
    node_statuses,
)

GET_RUN = "GET /api/2.0/mlflow/runs/get"
GET_HISTORY = "GET /api/2.0/mlflow/metrics/get-history"
UPDATE_RUN = "POST /api/2.0/mlflow/runs/update"
LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"
CREATE_RUN = "POST /api/2.0/mlflow/runs/create"


def new_run(client, name: str) -> str:
    experiment_id = client.create_experiment(name)
    return client.create_run(experiment_id, tags={TAG_JOB_ID: f"job-{name}"}).info.run_id


def assert_ok(result) -> None:
    code, output = (result.returncode, result.stdout) if hasattr(result, "stdout") else result
    assert code == 0, output[-4000:]


def test_per_node_steps_leave_one_run_finished_only_after_the_last(client, mlflow_server, project):
    runs_before = every_run_id(client)
    run_id = new_run(client, "per-node")
    name_at_start = client.get_run(run_id).info.run_name
    env = base_env(
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        MLFLOW_RUN_ID=run_id,
        KEDRO_CONFIG_RUN_ID="job-per-node",
        KEDRO_CONFIG_JOB_NAME="sample-pipeline-20261126",
    )
    statuses = []
    for step in SAMPLE_STEPS:
        if len(step) > 1:
            for result in project.run_together([[name] for name in step], env):
                assert_ok(result)
        else:
            assert_ok(project.run_nodes(step, env))
        statuses.append(client.get_run(run_id).info.status)

    assert statuses[:-1] == ["RUNNING"] * (len(SAMPLE_STEPS) - 1)
    assert statuses[-1] == "FINISHED"
    run = client.get_run(run_id)
    assert run.info.run_name == name_at_start  # node steps never rename the run
    for key, value in EXPECTED_PARAMS.items():
        assert run.data.params[key] == value, key
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")
    assert sorted(by_node(client, run_id, METRIC_NODE_DURATION)) == sorted(SAMPLE_NODES)
    assert min(by_node(client, run_id, METRIC_NODE_DURATION).values()) >= 0
    assert min(by_node(client, run_id, METRIC_NODE_PEAK_RSS).values()) > 10
    # The run's own row holds one value per record metric, not one per node.
    assert {k for k in run.data.metrics if k.startswith("kedro.")} == set(RECORD_METRICS)
    assert run.data.tags[TAG_LATEST_NODE] == "publish"
    assert run.data.tags[TAG_JOB_NAME] == "sample-pipeline-20261126"
    assert TAG_FAILED_NODE not in run.data.tags
    assert every_run_id(client) == runs_before | {run_id}  # no other run, in any experiment


def test_a_failing_node_makes_the_run_failed_for_good(client, mlflow_server, project):
    run_id = new_run(client, "failing")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    assert_ok(project.run_nodes(SAMPLE_NODES[:-2], env))
    assert client.get_run(run_id).info.status == "RUNNING"

    failed = project.run_nodes(["quality_gate"], env, "--params", "failure.fail=true")
    assert failed.returncode != 0
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILED_NODE] == "quality_gate"
    assert run.data.tags[TAG_ERROR] == (
        "ValueError: quality gate rejected the model (failure.fail is true)"
    )
    assert node_statuses(client, run_id)["quality_gate"] == "failed"
    assert run.data.tags[node_key(TAG_NODE_ERROR, "quality_gate")] == run.data.tags[TAG_ERROR]

    # A later step (a retry elsewhere in the graph) must not turn the run back.
    assert_ok(project.run_nodes(["compute_stats"], env))
    # The retried gate now passes and the last node completes: still FAILED, failure kept.
    assert_ok(project.run_nodes(["quality_gate"], env))
    assert_ok(project.run_nodes(["publish"], env))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILED_NODE] == "quality_gate"
    assert node_statuses(client, run_id)["quality_gate"] == "completed"  # on its retry


RACING_STEPS = 8
RACE_NODES = f"""
from kedro.pipeline import Pipeline, node


def measure(settings):
    return settings["rows"]


def gather(*parts):
    return sum(parts)


def create_pipeline():
    steps = [
        node(measure, f"params:step_{{i}}", f"part_{{i}}", name=f"step_{{i}}")
        for i in range({RACING_STEPS})
    ]
    parts = [f"part_{{i}}" for i in range({RACING_STEPS})]
    return Pipeline([*steps, node(gather, parts, "total", name="gather")])
"""
RACE_PARAMS = "".join(f"step_{i}:\n  rows: {10 * i}\n" for i in range(RACING_STEPS))


def test_job_id_only_steps_forced_to_race_converge_on_one_run(client, mlflow_server, tmp_path):
    """Eight steps of one job, no MLFLOW_RUN_ID, each creating a run: one run is left.

    The proxy holds every ``runs/create`` until all eight have sent theirs, so each step
    searched before any run existed and the race happens on every run of this test. It
    then holds the answers until all eight runs exist: the steps choose after their
    ``run_search_settle_s``, which assumes racing creates land within it, and a busy test
    host must not break that assumption by chance. Each step reads only its own parameters
    (nothing another step writes, no key another step logs); a ninth node, not run, keeps
    the pipeline unfinished.
    """
    project = generate_project(
        tmp_path / "project",
        RACE_NODES,
        # A held create must outwait the slowest of eight processes starting on a busy host.
        hook_options="http_timeout_s=180",
        conf={"base/parameters.yml": RACE_PARAMS},
    )
    steps = [[f"step_{i}"] for i in range(RACING_STEPS)]
    job_id = "job-race"
    with MlflowProxy(mlflow_server.uri) as proxy:
        creates = proxy.hold(CREATE_RUN, until=RACING_STEPS, timeout_s=150)
        answers = proxy.hold(CREATE_RUN, until=RACING_STEPS, timeout_s=60, stage="answer")
        env = base_env(
            MLFLOW_TRACKING_URI=proxy.uri,
            KEDRO_CONFIG_RUN_ID=job_id,
            KEDRO_CONFIG_JOB_NAME="race",
        )
        results = project.run_together(steps, env)
        created = proxy.stats().by_endpoint.get(CREATE_RUN, 0)
    for result in results:
        assert_ok(result)
    # The race was forced: every step's create was held until all eight had sent one.
    assert (creates.released, creates.timed_out) == (RACING_STEPS, False)
    assert (answers.released, answers.timed_out) == (RACING_STEPS, False)
    assert created == RACING_STEPS

    experiment_ids = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.{TAG_JOB_ID} = '{job_id}'",
        run_view_type=ViewType.ALL,
    )
    assert len(runs) == RACING_STEPS  # one run per step was created
    active = [run for run in runs if run.info.lifecycle_stage == "active"]
    losers = [run for run in runs if run.info.lifecycle_stage != "active"]
    assert len(active) == 1
    assert [run.info.lifecycle_stage for run in losers] == ["deleted"] * (RACING_STEPS - 1)
    # No step logged into a run that was then deleted: losers hold no node's data.
    for run in losers:
        assert not run.data.metrics
        assert not run.data.params

    winner = active[0]
    assert winner.info.status == "RUNNING"  # gather has not run
    assert winner.data.tags[TAG_JOB_NAME] == "race"
    race_order = [f"step_{i}" for i in range(RACING_STEPS)] + ["gather"]  # Kedro's order
    statuses = node_statuses(client, winner.info.run_id, race_order)
    assert statuses == {f"step_{i}": "completed" for i in range(RACING_STEPS)}
    durations = by_node(client, winner.info.run_id, METRIC_NODE_DURATION, race_order)
    assert len(durations) == RACING_STEPS
    for i in range(RACING_STEPS):
        assert winner.data.params[f"step_{i}.rows"] == str(10 * i)


def test_a_losing_step_whose_delete_failed_deletes_its_run_on_the_retry(client, mlflow_server):
    """A racing step that lost, and whose delete of its own run got a busy answer, retries
    the whole resolution: it must still delete that run, not just find the winner and leave
    a second active run of the job (seen once in CI under load, with 8 racing steps)."""
    import threading

    from kedro_vertex_hooks.resolve import RunSource, resolve_run
    from kedro_vertex_hooks.rest_client import RestTrackingClient
    from kedro_vertex_hooks.retry import OutageClock, retry_transient

    experiment = "race-retry"
    job_id = "job-race-retry"
    client.create_experiment(experiment)
    source = RunSource("job", None, job_id, "race-retry")
    with MlflowProxy(mlflow_server.uri, latency_s=0) as proxy:
        held_create = proxy.hold(CREATE_RUN, until=2, timeout_s=30)
        proxy.fail(503, count=1, path_contains="runs/delete")
        steps_client = RestTrackingClient(proxy.uri)
        created: list[str] = []
        chosen = []
        step = threading.Thread(
            target=lambda: chosen.append(
                retry_transient(
                    lambda: resolve_run(
                        steps_client, source, proxy.uri, experiment, 0.2, created=created
                    ),
                    OutageClock(20),
                    "race-retry",
                )[0]
            )
        )
        step.start()
        deadline = time.monotonic() + 20
        while held_create.arrived == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held_create.arrived == 1, "the step searched, found nothing and sent its create"
        # A racing step's run lands first, with an older start: it wins.
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        winner = client.create_run(
            experiment_id,
            start_time=int(time.time() * 1000) - 10_000,
            tags={TAG_JOB_ID: job_id},
        ).info.run_id
        proxy.release_holds()
        step.join(timeout=60)
        deletes = proxy.stats().by_endpoint.get("POST /api/2.0/mlflow/runs/delete", 0)

    assert chosen and chosen[0].run_id == winner
    assert deletes == 2  # the busy answer, then the retry's delete
    runs = client.search_runs([experiment_id], f"tags.{TAG_JOB_ID} = '{job_id}'", ViewType.ALL)
    stages = {run.info.run_id: run.info.lifecycle_stage for run in runs}
    assert sorted(stages.values()) == ["active", "deleted"]
    assert stages[winner] == "active"


def test_a_step_finding_a_run_stamped_in_the_future_waits_no_longer_than_the_settle(
    client, mlflow_server, tmp_path
):
    """Steps run on different machines: the one that created the job's run may have a clock
    an hour ahead. A step finding that run waits for it to settle, not for the hour."""
    project = generate_project(
        tmp_path / "project", RACE_NODES, conf={"base/parameters.yml": RACE_PARAMS}
    )
    experiment = client.get_experiment_by_name(PACKAGE)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(PACKAGE)
    job_id = "job-clock-ahead"
    an_hour_ahead_ms = int((time.time() + 3600) * 1000)
    run_id = client.create_run(
        experiment_id, start_time=an_hour_ahead_ms, tags={TAG_JOB_ID: job_id}
    ).info.run_id
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, KEDRO_CONFIG_RUN_ID=job_id)

    assert_ok(project.run_nodes(["step_0"], env))  # within project.run's timeout, not an hour

    run = client.get_run(run_id)
    race_order = [f"step_{i}" for i in range(RACING_STEPS)] + ["gather"]
    assert node_statuses(client, run_id, race_order) == {"step_0": "completed"}
    assert run.data.params["step_0.rows"] == "0"
    assert [
        r.info.run_id
        for r in client.search_runs([experiment_id], f"tags.{TAG_JOB_ID} = '{job_id}'")
    ] == [run_id]


@pytest.mark.parametrize("kind", ["missing", "deleted", "malformed"])
def test_an_unusable_run_id_fails_before_any_node(client, mlflow_server, project, kind):
    if kind == "missing":
        run_id = "0123456789abcdef0123456789abcdef"
    elif kind == "malformed":
        run_id = "not a run id!"
    else:
        run_id = new_run(client, "deleted")
        client.delete_run(run_id)
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    result = project.run_nodes(["make_raw_data"], env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert run_id in output
    assert mlflow_server.uri in output
    assert "Running node" not in output
    assert "Traceback" not in output  # one line: Error: ...
    assert not (project.root / "data" / "raw_data.json").exists()


def test_a_rerun_with_another_param_value_completes_and_records_the_conflict(
    client, mlflow_server, project
):
    run_id = new_run(client, "conflict")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    assert_ok(project.run_nodes(["make_raw_data"], env))
    rerun = project.run_nodes(["make_raw_data"], env, "--params", "data.seed=7")
    assert_ok(rerun)
    assert "already logged" in rerun.stdout + rerun.stderr
    run = client.get_run(run_id)
    assert run.data.params["data.seed"] == "42"
    assert run.data.tags[node_key(TAG_PARAM_CONFLICT, "data.seed")] == "7"
    assert node_statuses(client, run_id) == {"make_raw_data": "completed"}


@pytest.mark.parametrize(
    ("runner", "mp_context"),
    [
        ("ThreadRunner", None),
        ("ParallelRunner", "fork"),
        ("ParallelRunner", "spawn"),
    ],
)
def test_every_runner_logs_into_the_one_run(client, mlflow_server, project, runner, mp_context):
    runs_before = every_run_id(client)
    run_id = new_run(client, f"runner-{runner}-{mp_context}")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    if mp_context:
        env["KEDRO_MP_CONTEXT"] = mp_context
    assert_ok(project.run(["run", "--runner", runner], env))
    assert_finished_with_every_node_completed(client, run_id)
    assert sorted(by_node(client, run_id, METRIC_NODE_DURATION)) == sorted(SAMPLE_NODES)
    assert every_run_id(client) == runs_before | {run_id}  # no other run, in any experiment


def test_a_node_whose_output_cannot_be_saved_is_the_failed_node(client, mlflow_server, project):
    run_id = new_run(client, "save-fails")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    assert_ok(project.run_nodes(SAMPLE_NODES[:-1], env))
    # Kedro saves outputs after after_node_run: the node must not be reported completed.
    (project.root / "conf" / "local" / "catalog.yml").write_text(
        "publication:\n"
        "  type: sample_project.datasets.JSONFile\n"
        "  filepath: /proc/kedro-vertex-hooks/publication.json\n"
    )
    result = project.run_nodes(["publish"], env)
    assert result.returncode != 0
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert node_statuses(client, run_id)["publish"] == "failed"
    assert run.data.tags[TAG_FAILED_NODE] == "publish"
    assert run.data.tags[TAG_ERROR].startswith("FileNotFoundError: ")
    assert "/proc/kedro-vertex-hooks" in run.data.tags[TAG_ERROR]


def test_use_mlflow_client_logs_the_same_run_through_mlflow(client, mlflow_server, project):
    """``MlflowRunHooks(use_mlflow_client=True)``: the MlflowClient path instead of REST."""
    settings = project.root / "src" / "sample_project" / "settings.py"
    settings.write_text(
        settings.read_text().replace("MlflowRunHooks(", "MlflowRunHooks(use_mlflow_client=True,")
    )
    run_id = new_run(client, "mlflow-client")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)

    assert_ok(project.run_nodes(SAMPLE_NODES[:5], env))
    assert client.get_run(run_id).info.status == "RUNNING"
    assert_ok(project.run_nodes(SAMPLE_NODES[5:], env))

    assert_finished_with_every_node_completed(client, run_id)
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.json"]


def test_only_a_step_that_may_finish_the_pipeline_reads_and_none_reads_the_whole_run(
    client, mlflow_server, project
):
    """A step upstream of an unfinished node cannot complete the pipeline: it only writes.
    The step with no node downstream reads the nodes' outcomes (one metric's history) and
    decides. No step reads the whole run, whose size grows with the pipeline."""
    run_id = new_run(client, "end-reads")
    with MlflowProxy(mlflow_server.uri, latency_s=0) as proxy:
        env = base_env(MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
        stats = []
        # The last step also writes the report artifact, for which MLflow reads the run.
        for step in (SAMPLE_NODES[:1], SAMPLE_NODES[1:9], SAMPLE_NODES[9:]):
            proxy.reset_stats()
            assert_ok(project.run_nodes(step, env))
            proxy.wait_idle()
            stats.append(proxy.stats().by_endpoint)

    assert [s.get(GET_RUN, 0) for s in stats[:2]] == [0, 0]
    assert [s.get(GET_HISTORY, 0) for s in stats] == [0, 0, 1]
    # The first step: the start check, then the node's start and end, which share one
    # request when the node is quicker than the writer's linger (a busy machine can split it).
    assert stats[0].get(UPDATE_RUN) == 1
    assert stats[0].get(LOG_BATCH) in (1, 2)
    assert sum(stats[0].values()) == 1 + stats[0][LOG_BATCH]
    assert client.get_run(run_id).info.status == "FINISHED"  # set by the last step
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")


def test_a_last_step_reads_outcomes_while_its_node_runs_and_after_its_write_only_if_needed(
    client, mlflow_server, project
):
    """The step with no node downstream reads the outcomes while its nodes run. When every
    other node had completed, its end sends its record and the status together (one round
    trip); otherwise it reads again after its record, as two leaves ending together must
    (at least one of them then sees both)."""
    assert_ok(project.run_nodes(SAMPLE_NODES, base_env(MLFLOW_TRACKING_URI=mlflow_server.uri)))
    run_id = new_run(client, "read-ahead")  # the data on disk is the run above's
    last = SAMPLE_NODES[-1:]

    def tracking_requests(proxy: MlflowProxy, nodes) -> list[RequestRecord]:
        proxy.reset_stats()
        assert_ok(project.run_nodes(nodes, env))
        proxy.wait_idle()
        records = sorted(proxy.stats().records, key=lambda record: record.started)
        wanted = (GET_HISTORY, LOG_BATCH, UPDATE_RUN)
        return [record for record in records if record.endpoint in wanted]

    with MlflowProxy(mlflow_server.uri, latency_s=0.1) as proxy:
        env = base_env(MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
        alone = [r.endpoint for r in tracking_requests(proxy, last)]  # no other node's record
        status_alone = client.get_run(run_id).info.status
        tracking_requests(proxy, SAMPLE_NODES[:-1])
        after_the_rest = tracking_requests(proxy, last)

    assert status_alone == "RUNNING"
    assert alone.count(GET_HISTORY) == 2 and alone[-1] == GET_HISTORY
    assert alone.index(GET_HISTORY) < alone.index(LOG_BATCH)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [r.endpoint for r in after_the_rest].count(GET_HISTORY) == 1
    record, status = after_the_rest[-2:]
    assert {record.endpoint, status.endpoint} == {LOG_BATCH, UPDATE_RUN}
    # in flight at the same time: the step's end waited for one round trip, not two
    assert status.started < record.started + record.seconds
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")


def test_a_run_of_the_whole_pipeline_in_one_process_ends_with_one_round_trip(
    client, mlflow_server, project
):
    """`kedro run` without a run id creates the run and runs every node here: it is FINISHED
    at the end without reading anything, its status sent alongside the last record."""
    runs_before = every_run_id(client)
    with MlflowProxy(mlflow_server.uri, latency_s=0.1) as proxy:
        assert_ok(project.run(["run"], base_env(MLFLOW_TRACKING_URI=proxy.uri)))
        proxy.wait_idle()
        records = sorted(proxy.stats().records, key=lambda record: record.started)

    (run_id,) = every_run_id(client) - runs_before
    assert_finished_with_every_node_completed(client, run_id)
    assert GET_HISTORY not in [r.endpoint for r in records]
    record = [r for r in records if r.endpoint == LOG_BATCH][-1]
    (status,) = [r for r in records if r.endpoint == UPDATE_RUN]
    assert status.started < record.started + record.seconds  # in flight together


def test_a_local_run_into_a_deleted_experiment_restores_it(client, mlflow_server, project):
    """The experiment is looked up while Kedro loads the pipeline; a deleted one is restored
    when the run is created, as it was when looked up then."""
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    runs_before = every_run_id(client)
    assert_ok(project.run_nodes(SAMPLE_NODES[:1], env))
    (first,) = every_run_id(client) - runs_before
    experiment_id = client.get_run(first).info.experiment_id
    client.delete_experiment(experiment_id)

    assert_ok(project.run_nodes(SAMPLE_NODES[:1], env))

    (second,) = every_run_id(client) - runs_before - {first}
    assert client.get_run(second).info.experiment_id == experiment_id
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"
    assert client.get_run(second).info.status == "FINISHED"


def test_a_write_that_came_late_is_recorded_without_reading_the_run(client, mlflow_server, project):
    """A retried write may land twice: the record is append-only, so a late copy adds a
    point and overwrites nothing; the step needs no read to repair it."""
    run_id = new_run(client, "late-write")
    with MlflowProxy(mlflow_server.uri, latency_s=0) as proxy:
        env = base_env(MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
        proxy.fail(503, count=1, path_contains="runs/log-batch")
        result = project.run_nodes(SAMPLE_NODES[:1], env)
        proxy.wait_idle()
        reads = proxy.stats().by_endpoint

    assert_ok(result)
    assert re.search(r"delivered, [1-9]\d* of them late", result.stdout + result.stderr)
    assert reads.get(GET_RUN, 0) == reads.get(GET_HISTORY, 0) == 0
    assert client.get_run(run_id).info.status == "RUNNING"
    assert node_statuses(client, run_id) == {SAMPLE_NODES[0]: "completed"}
