"""The kedro-vertexai drop-in: the pipeline kedro-vertexai 1.0.0 compiles, run task by task.

sample_project is compiled by kedro-vertexai itself (``kedro vertexai compile``) in its own
image environment (kedro-vertexai[mlflow]==1.0.0, kedro-mlflow 1.x, MLflow 2.x, this package;
settings.py with nothing but ``HOOKS = (MlflowRunHooks(),)``), then every task of the spec runs
as Vertex AI runs it (scripts/run_vertexai_spec.py): its command exactly as compiled, one
process each, placeholders filled, parallel branches together, against a real MLflow 2.x
server. The run is read after every task, as a person refreshing the UI would see it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kedro_vertex_hooks.naming import (
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_LATEST_NODE,
    TAG_NODE_ERROR,
    TAG_PIPELINE,
    node_key,
)
from tests.support.auth_stack import AUDIENCE, AuthStack, google_free_env
from tests.support.mlflow_server import MlflowServer, free_port
from tests.support.project import SAMPLE_NODES, base_env
from tests.support.tracked import (
    assert_finished_with_every_node_completed,
    every_run_id,
    node_statuses,
)
from tests.support.vertexai import (
    VERTEXAI_PYTHON,
    VERTEXAI_VENV,
    compile_spec,
    executor,
    step_nodes,
    vertexai_project,
)

START_TASK = "mlflow-start-run"
RUN_LABEL = "--params run_label={{$.inputs.parameters['run_label']}}"
KEDRO_VERTEXAI_OAUTH = "kedro_vertexai.auth.gcp.MLFlowGoogleOauthRequestHeaderProvider"
FAILING_NODE = "train_tree"
# Downstream of train_tree: never started once it failed (Vertex skips what depends on it).
NEVER_RUN = {"evaluate_tree", "select_model", "write_report", "quality_gate", "publish"}


@pytest.fixture(scope="module")
def server_2x(tmp_path_factory: pytest.TempPathFactory):
    """The tracking server of a kedro-vertexai shop: MLflow 2.x (the image's own)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-2x"), python=VERTEXAI_PYTHON).start()
    yield server
    server.stop()


@dataclass
class Seen:
    """The run as it read right after one task ended."""

    task: str
    nodes: list[str]
    returncode: int | None
    run_ids: set[str]
    status: str
    name: str
    node_status: dict[str, str]


def run_compiled(
    project, spec: Path, client, env, workdir: Path, job_id: str, job_name: str, parameters=None
):
    """Run every task of the spec; what the server held after each one, in order (runs that
    were there before, other tests' included, left out)."""
    tasks = executor.load_tasks(spec)
    before = every_run_id(client)
    seen: list[Seen] = []
    lock = threading.Lock()

    def after(result) -> None:
        run_ids = every_run_id(client) - before
        run = client.get_run(next(iter(run_ids))) if len(run_ids) == 1 else None
        statuses = node_statuses(client, run.info.run_id) if run else {}
        with lock:
            seen.append(
                Seen(
                    task=result.name,
                    nodes=step_nodes(tasks[result.name]),
                    returncode=result.returncode,
                    run_ids=run_ids,
                    status=run.info.status if run else "",
                    name=run.info.run_name if run else "",
                    node_status={n: statuses.get(n, "") for n in SAMPLE_NODES},
                )
            )

    results = executor.run_spec(
        spec,
        project.root,
        workdir,
        VERTEXAI_VENV / "bin",
        env,
        job_name=job_name,
        job_id=job_id,
        parameters=parameters,
        on_task_end=after,
        echo=lambda line: None,
    )
    return tasks, results, seen


def logs(results) -> str:
    return "\n".join(
        f"--- {r.name} (exit {r.returncode})\n{r.log.read_text()[-3000:]}"
        for r in results.values()
        if r.log is not None and r.returncode != 0
    )


@pytest.fixture(scope="module")
def iap(server_2x) -> Iterator[AuthStack]:
    """IAP in front of the MLflow 2.x server, Google's metadata server beside it."""
    yield from AuthStack.serve(server_2x.uri)


# A whole compiled pipeline: 14 tasks of two ~8 s processes each; ~3 min on an idle
# 2-core machine, far more when the other worker runs 64 kedro processes beside it.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "grouping", [False, True], ids=["one-node-per-step", "tag-grouping-behind-iap"]
)
def test_compiled_pipeline_leaves_one_run_running_then_finished(
    grouping, server_2x, iap, tmp_path: Path
):
    """Without grouping, the pipeline takes a run-time parameter (``compile --params``, each
    step then runs ``kedro run ... --params run_label=nightly``). With grouping, the server is
    behind IAP and mlflow.yml names kedro-vertexai's own OAuth provider class, unchanged:
    every request must carry exactly one valid token."""
    from mlflow import MlflowClient

    client = MlflowClient(server_2x.uri)
    provider = {"type": KEDRO_VERTEXAI_OAUTH, "pass_context": True,
                "init_kwargs": {"client_id": AUDIENCE}}  # fmt: skip
    project = vertexai_project(
        tmp_path / "project", grouping=grouping, header_provider=provider if grouping else None
    )
    spec = compile_spec(project, params="" if grouping else "run_label:str")
    before = every_run_id(client)
    job_id, job_name = f"job-{tmp_path.name}", f"sample-project-{tmp_path.name}"[:60]
    iap.reset()
    env = (
        google_free_env(tmp_path, MLFLOW_TRACKING_URI=iap.proxy.url, **iap.google.metadata_env())
        if grouping
        else base_env(MLFLOW_TRACKING_URI=server_2x.uri)
    )
    parameters = {} if grouping else {"run_label": "nightly"}
    tasks, results, seen = run_compiled(
        project, spec, client, env, tmp_path / "vertex", job_id, job_name, parameters
    )

    assert all(r.returncode == 0 for r in results.values()), logs(results)
    if grouping:
        assert iap.proxy.rejected == 0, iap.proxy.rejections[:5]
        assert iap.proxy.accepted > len(tasks), "the steps went through the proxy"
        assert iap.google.issued > 0
    if grouping:
        assert any(len(step_nodes(t)) > 1 for t in tasks.values()), "grouping compiled no group"
    else:
        node_tasks = [t for t in tasks.values() if step_nodes(t)]
        assert all(RUN_LABEL in t.args[0] for t in node_tasks), "compiled without --params"
    first, *node_steps = seen
    assert first.task == START_TASK
    run_id = (first.run_ids - before).pop()
    assert first.status == "RUNNING", "the start step's fluent run must not end FINISHED"
    for step in seen:
        assert step.run_ids - before == {run_id}, f"one run per execution (after {step.task})"
        assert step.name == first.name, f"the run was renamed by {step.task}"
        for node in step.nodes:
            assert step.node_status[node] == "completed", (step.task, node)
    assert [s.status for s in node_steps[:-1]] == ["RUNNING"] * (len(node_steps) - 1)
    assert node_steps[-1].status == "FINISHED"

    assert_finished_with_every_node_completed(client, run_id)
    run = client.get_run(run_id)
    assert run.info.run_name == first.name
    assert run.data.tags[TAG_JOB_ID] == job_id
    assert run.data.tags[TAG_JOB_NAME] == job_name
    assert run.data.tags[TAG_PIPELINE] == "__default__"
    assert run.data.tags[TAG_LATEST_NODE] in node_steps[-1].nodes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("grouping", [False, True], ids=["one-node-per-step", "tag-grouping"])
def test_compiled_pipeline_with_a_failing_node_stays_failed(grouping, server_2x, tmp_path: Path):
    from mlflow import MlflowClient

    client = MlflowClient(server_2x.uri)
    project = vertexai_project(tmp_path / "project", grouping=grouping, failing=True)
    spec = compile_spec(project)
    before = every_run_id(client)
    job_id, job_name = f"job-{tmp_path.name}", f"failing-{tmp_path.name}"[:60]
    env = base_env(MLFLOW_TRACKING_URI=server_2x.uri)
    _, results, seen = run_compiled(
        project, spec, client, env, tmp_path / "vertex", job_id, job_name
    )

    failed = [s for s in seen if s.returncode not in (0, None)]
    assert [FAILING_NODE in s.nodes for s in failed] == [True], logs(results)
    failure_index = seen.index(failed[0])
    run_id = (seen[0].run_ids - before).pop()
    assert seen[0].status == "RUNNING"
    for step in seen:
        assert step.run_ids - before == {run_id}, step.task
        if step.node_status[FAILING_NODE] != "failed":  # the node has not failed yet
            assert step.status == "RUNNING", f"before the failure, after {step.task}"
    # FAILED from the failing step's end on (a step that ended while it was still exiting
    # may see it FAILED already: the status is written when the node fails).
    for step in seen[failure_index:]:
        assert step.status == "FAILED", f"FAILED is for good: after {step.task}"
    if not grouping:
        later = seen[failure_index + 1 :]
        assert later, "a task that ended after the failure (evaluate_linear's branch)"
        for step in later:
            assert all(step.node_status[n] == "completed" for n in step.nodes), step.task

    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.run_name == seen[0].name
    assert run.data.tags[TAG_FAILED_NODE] == FAILING_NODE
    assert run.data.tags[TAG_ERROR].startswith("ValueError: range() arg 3 must not be zero")
    statuses = node_statuses(client, run_id)
    assert statuses[FAILING_NODE] == "failed"
    assert run.data.tags[node_key(TAG_NODE_ERROR, FAILING_NODE)] == run.data.tags[TAG_ERROR]
    for node in NEVER_RUN:
        assert node not in statuses, node
    assert run.data.tags[TAG_JOB_ID] == job_id


def test_a_kedro_vertexai_provider_that_cannot_fetch_a_token_stops_the_step_in_words(
    server_2x, tmp_path: Path
):
    """kedro-vertexai's own class would log the failure and send ``Bearer None``; the step
    must stop before its first node, naming the provider and the cause, without a traceback."""
    from mlflow import MlflowClient

    client = MlflowClient(server_2x.uri)
    run_id = client.create_run(client.create_experiment(f"no-token-{tmp_path.name}")).info.run_id
    provider = {"type": KEDRO_VERTEXAI_OAUTH, "pass_context": True,
                "init_kwargs": {"client_id": AUDIENCE}}  # fmt: skip
    project = vertexai_project(tmp_path / "project", header_provider=provider)
    nowhere = f"127.0.0.1:{free_port()}"  # no metadata server answers here
    env = google_free_env(
        tmp_path,
        MLFLOW_TRACKING_URI=server_2x.uri,
        MLFLOW_RUN_ID=run_id,
        GCE_METADATA_HOST=nowhere,
        GCE_METADATA_IP=nowhere,
    )

    result = project.run(["run", "-e", "vertexai", "--nodes", SAMPLE_NODES[0]], env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    # kedro-mlflow, before any hook of ours, sets up the experiment through kedro-vertexai's
    # own instance, which logs the failure with a traceback and sends "Bearer None"; the
    # step then ends on our one line, not on an exception.
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("Error: Request header provider"), output[-3000:]
    assert KEDRO_VERTEXAI_OAUTH in last_line and AUDIENCE in last_line, last_line
    assert "metadata server" in last_line, last_line
    assert node_statuses(client, run_id) == {}
