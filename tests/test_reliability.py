"""Tracking outages: sample_project run node by node through a loopback proxy that takes the
MLflow server away (refused connections, 503s, slowness) or in front of a server that
restarts. Nodes must complete, and the run must end up holding everything they logged.

The default suite takes the server away for 60 s (the default outage budget) in the middle
of a per-node pipeline; a busy server (503s, slow answers) is waited for past that budget; a
step whose writes are given up exits non-zero, naming them.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kedro_vertex_hooks.naming import (
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    NODE_COMPLETED,
    TAG_LATEST_NODE,
)
from tests.support.generated_project import generate_project, write_logging_config
from tests.support.mlflow_server import MlflowServer
from tests.support.parallel_steps import (
    assert_every_step_succeeded,
    assert_run_holds_every_step,
    parallel_steps_project,
    run_all_at_once,
)
from tests.support.project import SAMPLE_NODES, SAMPLE_STEPS, Project, base_env
from tests.support.proxy import MlflowProxy
from tests.support.tracked import by_node, every_run_id, node_statuses

GATE_SLEEP_S = 4
EXPECTED_PARAMS = {
    "data.seed": "42",
    "cleaning.clip.low": "-5.0",
    "model.linear.epochs": "40",
    "model.tree.min_samples.leaf": "2",
    "selection.metric": "mae",
    "report.api_token": "***",
    "failure.fail": "False",
    "failure.sleep_s": str(GATE_SLEEP_S),
}
BEFORE_GATE = SAMPLE_STEPS[: SAMPLE_STEPS.index(("quality_gate",))]


@pytest.fixture(scope="module")
def logging_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_logging_config(tmp_path_factory.mktemp("logging") / "logging.yml")


@pytest.fixture
def proxy(mlflow_server: MlflowServer) -> Iterator[MlflowProxy]:
    with MlflowProxy(mlflow_server.uri, latency_s=0) as running:
        yield running


def with_hook_options(project: Project, **options: object) -> Project:
    """Pass ``options`` to MlflowRunHooks(...) in the project copy's settings.py."""
    settings = next((project.root / "src").glob("*/settings.py"))
    text = settings.read_text()
    arguments = "".join(f"\n        {name}={value!r}," for name, value in options.items())
    assert "MlflowRunHooks(" in text
    settings.write_text(text.replace("MlflowRunHooks(", "MlflowRunHooks(" + arguments, 1))
    return project


def step_env(logging_config: str, **extra: str) -> dict[str, str]:
    return base_env(KEDRO_LOGGING_CONFIG=logging_config, **extra)


def new_run(client, name: str) -> str:
    experiment_id = client.create_experiment(name)
    return client.create_run(experiment_id).info.run_id


def assert_ok(code_and_output: tuple[int, str]) -> None:
    code, output = code_and_output
    assert code == 0, output[-4000:]


def run_steps(project: Project, steps, env: dict[str, str]) -> None:
    for step in steps:
        for result in project.run_together([[name] for name in step], env):
            assert_ok(result)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def node_status(client, run_id: str, node: str, order: list[str] | None = None) -> str | None:
    return node_statuses(client, run_id, order).get(node)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=240)
    return process.returncode, output


def assert_run_holds_everything(client, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, value in EXPECTED_PARAMS.items():
        assert run.data.params.get(key) == value, key
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, NODE_COMPLETED)
    assert sorted(by_node(client, run_id, METRIC_NODE_DURATION)) == sorted(SAMPLE_NODES)
    assert sorted(by_node(client, run_id, METRIC_NODE_PEAK_RSS)) == sorted(SAMPLE_NODES)
    assert run.data.tags[TAG_LATEST_NODE] == "publish"


OUTAGE_S = 60  # the default outage_budget_s: the longest outage a step waits out
RETRY_PARAM = "split.retry_marker"  # a value only the retried step logs


def outage_lengths(output: str) -> list[float]:
    """The outages a step reports having waited out, in seconds."""
    return [float(s) for s in re.findall(r"answering again after (\d+\.\d) s", output)]


@pytest.mark.timeout(600)  # a dozen kedro processes and a minute away: slow on a busy machine
def test_a_per_node_pipeline_completes_with_the_server_away_for_the_whole_budget(
    client, proxy, project, logging_config
):
    """Away for 60 s while quality_gate computes; a retried step (split_test, with a value
    no earlier step logged) starts while it is away. Everything either wrote must land."""
    run_id = new_run(client, "outage")
    env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
    run_steps(project, BEFORE_GATE, env)
    gate = project.start(
        ["run", "--nodes", "quality_gate", "--params", f"failure.sleep_s={GATE_SLEEP_S}"], env
    )
    wait_for(lambda: node_status(client, run_id, "quality_gate") == "running")
    proxy.down(seconds=OUTAGE_S)
    retried = project.start(["run", "--nodes", "split_test", "--params", f"{RETRY_PARAM}=7"], env)
    gate_result, retried_result = finish(gate), finish(retried)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert_ok(output_of(project.run_nodes(["publish"], env)))

    for result in (gate_result, retried_result):
        assert_ok(result)
        assert "tracking server not answering" in result[1]
    # Both waited through most of the minute (the gate from its node's end, the retried
    # step from its start-up, each a few seconds into the outage), and then delivered.
    assert max(outage_lengths(gate_result[1])) > OUTAGE_S - 15, gate_result[1][-3000:]
    assert max(outage_lengths(retried_result[1])) > OUTAGE_S - 20, retried_result[1][-3000:]
    assert "late after a tracking outage, 0 given up" in gate_result[1]
    assert_run_holds_everything(client, run_id)
    assert client.get_run(run_id).data.params[RETRY_PARAM] == "7"


TWO_NODES = ["first", "slow"]  # Kedro's order: slow needs first

RESTART_NODES = """
import time

from kedro.pipeline import Pipeline, node


def first(params):
    return params["value"]


def slow(value, params):
    time.sleep(params["sleep_s"])
    return value + 1


def create_pipeline():
    return Pipeline(
        [
            node(first, "params:first", "a", name="first"),
            node(slow, ["a", "params:slow"], "b", name="slow"),
        ]
    )
"""


@pytest.mark.timeout(600)
def test_a_real_server_restart_mid_node_loses_nothing(tmp_path: Path, logging_config):
    """The same story as above with a real `mlflow server` stopped and started again (about
    12 s away) while a node computes, on a two-node project to keep it short."""
    from mlflow import MlflowClient

    project = generate_project(
        tmp_path / "project",
        RESTART_NODES,
        conf={"base/parameters.yml": "first: {value: 1}\nslow: {sleep_s: 3}\n"},
    )
    server = MlflowServer(tmp_path / "restarting-server").start()
    restart = threading.Thread(target=server.restart)
    try:
        client = MlflowClient(tracking_uri=server.uri)
        run_id = new_run(client, "restart")
        env = step_env(logging_config, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id)
        step = project.start(["run"], env)
        wait_for(lambda: node_status(client, run_id, "slow", TWO_NODES) == "running")
        restart.start()
        retried = project.start(["run", "--nodes", "first"], env)  # starts while it is away
        results = finish(step), finish(retried)
        for result in results:
            assert_ok(result)
        assert "late after a tracking outage, 0 given up" in results[0][1]
        assert "tracking server not answering" in results[1][1]

        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"first.value": "1", "slow.sleep_s": "3"}
        assert node_statuses(client, run_id, TWO_NODES) == dict.fromkeys(TWO_NODES, "completed")
        assert sorted(by_node(client, run_id, METRIC_NODE_DURATION, TWO_NODES)) == TWO_NODES
    finally:
        restart.join()
        server.stop()


def test_a_busy_server_is_waited_for_past_the_outage_budget(client, proxy, project, logging_config):
    """Overload is not an outage: 503s for three times the outage budget, then answers
    slower than http_timeout_s, and nothing is given up."""
    with_hook_options(project, http_timeout_s=2, outage_budget_s=2)
    run_id = new_run(client, "503s")
    env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
    proxy.fail(503, count=8, path_contains="runs/update")  # the step's first request
    # Four refusals of the first write: retried after 0.5, 1, 2 and 4 s, past the budget.
    proxy.fail(503, count=4, path_contains="runs/log-batch")
    result = output_of(project.run_nodes(["make_raw_data"], env))
    assert_ok(result)
    assert "tracking server busy" in result[1]
    assert max(outage_lengths(result[1])) > 2 * 2  # twice outage_budget_s, and delivered
    assert "0 given up" in result[1]
    # Answers slower than http_timeout_s, more often than MLflow's own two retries absorb.
    # (The first request, which changes nothing: a write that timed out may still land
    # later, see docs/reliability.md.)
    proxy.slow(5, count=3, path_contains="runs/update")
    result = output_of(project.run_nodes(["clean_data"], env))
    assert_ok(result)
    assert "Read timed out" in result[1]
    assert "tracking server answering again" in result[1]

    run = client.get_run(run_id)
    assert run.data.params["data.seed"] == "42"
    assert run.data.params["cleaning.clip.low"] == "-5.0"
    statuses = node_statuses(client, run_id)
    assert statuses == {"make_raw_data": NODE_COMPLETED, "clean_data": NODE_COMPLETED}
    proxy.wait_idle(timeout_s=10)  # the last slowed request is answered after the client left
    faults = [r.fault for r in proxy.stats().records if r.fault]
    assert faults.count("status") == 8 + 4
    assert faults.count("delay") == 3


@pytest.mark.parametrize("on_undelivered", ["fail", "warn"])
def test_a_step_whose_writes_are_given_up_says_so(
    client, proxy, project, logging_config, on_undelivered
):
    """Past the outage budget a step's writes are given up; by default the step then fails,
    naming them, so that the orchestrator retries it instead of trusting a run missing
    them. With on_undelivered='warn' it succeeds with a warning."""
    with_hook_options(project, outage_budget_s=3, on_undelivered=on_undelivered)
    run_id = new_run(client, f"given-up-{on_undelivered}")
    env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
    proxy.fail(502, path_contains="runs/log-batch")  # a gateway whose server is gone
    code, output = output_of(project.run_nodes(["make_raw_data"], env))
    assert (project.root / "data" / "raw_data.json").exists()  # the node's work is kept
    assert node_status(client, run_id, "make_raw_data") is None  # really lost
    assert re.search(r"[1-9]\d* given up", output)
    if on_undelivered == "warn":
        assert code == 0, output[-4000:]
        return
    assert code != 0
    assert "Traceback" not in output  # one line: Error: ...
    error = next(line for line in output.splitlines() if line.startswith("Error: "))
    assert f"MLflow run {run_id}: " in error
    assert "could not be delivered" in error
    assert TAG_LATEST_NODE in error
    assert "data.seed" in error
    assert "on_undelivered='warn'" in error


def test_strict_mode_fails_the_step_on_a_tracking_outage(client, proxy, project, logging_config):
    with_hook_options(project, strict=True, outage_budget_s=2)
    run_id = new_run(client, "strict")
    env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
    proxy.fail(502, path_contains="runs/log-batch")
    code, output = output_of(project.run_nodes(["make_raw_data"], env))
    assert code != 0
    assert "Traceback" not in output  # one line: Error: ...
    assert "did not answer for 2 s (outage_budget_s)" in output


@pytest.mark.parametrize("untracked", [False, True], ids=["fail", "run_untracked"])
def test_an_unreachable_server_at_start_up(client, proxy, project, untracked, logging_config):
    with_hook_options(project, outage_budget_s=2, run_untracked_if_unreachable=untracked)
    run_id = new_run(client, f"unreachable-{untracked}")
    env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
    proxy.down()
    code, output = output_of(project.run_nodes(["make_raw_data"], env))
    assert f"the tracking server at {proxy.uri} did not answer for 2 s" in output
    assert "Connection refused" in output  # the cause
    produced = (project.root / "data" / "raw_data.json").exists()
    if untracked:
        assert code == 0, output[-4000:]
        assert "Running this step UNTRACKED" in output
        assert produced
    else:
        assert code != 0
        assert "run_untracked_if_unreachable=True" in output
        assert not produced
        assert "Running node" not in output


def output_of(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    return result.returncode, result.stdout + result.stderr


SIXTEEN = 16
BUSY_LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"
SLOW_ANSWERS = BUSY_ANSWERS = 24


def make_the_server_busy(proxy: MlflowProxy, stop: threading.Event) -> None:
    """Once the steps write, answer the next requests 4 s late, then the ones after with a
    burst of 503s: a one-worker server under a wide fan-out. Counted, not timed, so the
    faults hit the steps however slowly the machine runs them."""
    while not stop.is_set() and not proxy.stats().by_endpoint.get(BUSY_LOG_BATCH):
        stop.wait(0.1)
    proxy.slow(4, count=SLOW_ANSWERS)
    proxy.fail(503, count=BUSY_ANSWERS)


@pytest.mark.timeout(900)
def test_16_steps_on_a_slow_and_busy_server_lose_nothing(
    client, tmp_path, mlflow_server, logging_config
):
    """Overload is not an outage: 16 steps started together (50 params, metrics and tags
    each) while the server answers 4 s late and then in bursts of 503s. Every step exits 0
    with everything it logged in the run, and no other run appears anywhere."""
    project = parallel_steps_project(tmp_path / "sixteen", SIXTEEN, metrics_and_tags=True)
    runs_before = every_run_id(client)
    run_id = new_run(client, "sixteen")
    stop = threading.Event()
    with MlflowProxy(mlflow_server.uri) as proxy:  # 25 ms per request, like a remote server
        busy = threading.Thread(target=make_the_server_busy, args=(proxy, stop), daemon=True)
        busy.start()
        env = step_env(logging_config, MLFLOW_TRACKING_URI=proxy.uri, MLFLOW_RUN_ID=run_id)
        try:
            results = run_all_at_once(project, SIXTEEN, env, tags=True, timeout_s=600)
        finally:
            stop.set()
            busy.join()
        faults = [record.fault for record in proxy.stats().records]
    assert (faults.count("delay"), faults.count("status")) == (SLOW_ANSWERS, BUSY_ANSWERS)
    assert any("tracking server busy" in result.output for result in results)
    assert_every_step_succeeded(results)
    assert_run_holds_every_step(client, run_id, results, metrics_and_tags=True)
    assert every_run_id(client) == runs_before | {run_id}
