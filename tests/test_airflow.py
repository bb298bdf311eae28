"""sample_project on a real Apache Airflow 3, through kedro-airflow's DAGs: no glue.

Airflow (scheduler, dag-processor, api-server of .venv-airflow) is started once for the test,
from a copy of sample_project, against a private MLflow server, with two DAGs made by
``kedro airflow create``: the stock one, untouched (Kedro env ``local``), and one from the
template this package ships (start-run as a setup task, finalize as a teardown task; Kedro env
``template``, ``retries=0``). Each DAG runs twice, both DAGs at a time: clean, then broken
(the stock DAG's quality_gate fails, retried once by Airflow; the template DAG's quality_gate
is killed mid-node). Every task is a KedroSession in an Airflow task process; a node finds the
run through AIRFLOW_CTX_DAG_RUN_ID, which Airflow exports to every task.

The two DAGs' run ids differ on purpose: Airflow keeps run ids unique per DAG only, and the
run is found by the run id alone (two DAGs' equal run ids in one experiment share one run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kedro_vertex_hooks.naming import (
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_RUN_NOTE,
)
from kedro_vertex_hooks.summary import TIMELINE_ARTIFACT
from tests.support.airflow import AIRFLOW_PYTHON, Airflow
from tests.support.mlflow_server import MlflowServer
from tests.support.project import SAMPLE_NODES, Project, base_env
from tests.support.tracked import (
    assert_finished_with_every_node_completed,
    every_run_id,
    node_statuses,
    note_node_rows,
)

STOCK = "sample-project"  # kedro-airflow names the DAG after the package
WITH_FINALIZE = "sample-project-with-finalize"  # the shipped template, --params dag_id=...
TEMPLATE_ENV = "template"  # the template DAG's Kedro env, so that its params can differ
SETUP_TASK, TEARDOWN_TASK = "mlflow-start-run", "mlflow-finalize"
# An env replaces a top-level key whole: both keys of `failure` are given.
FAILING_PARAMS = "failure:\n  fail: true\n  sleep_s: 0\n"
SLOW_GATE_PARAMS = "failure:\n  fail: false\n  sleep_s: 600\n"  # killed long before


@dataclass
class DagRun:
    """One DAG run as Airflow and MLflow show it after it ended."""

    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, dict[str, Any]]
    mlflow_runs: list[Any]  # every MLflow run tagged with this DAG run's id
    logs: str = field(repr=False)

    @property
    def the_run(self) -> Any:
        """The one MLflow run of this DAG run (asserting there is exactly one)."""
        ids = [run.info.run_id for run in self.mlflow_runs]
        assert len(ids) == 1, f"{len(ids)} MLflow runs {ids}: {self.why()}"
        return self.mlflow_runs[0]

    def why(self) -> str:
        """Assertion context: the task states and every task's log."""
        states = {task: ti["state"] for task, ti in self.tasks.items()}
        return f"{self.dag_id} / {self.run_id} ({self.state}) tasks: {states}\n{self.logs}"


@dataclass
class Deployment:
    client: Any
    runs: dict[str, DagRun]  # by label: stock-clean, stock-failing, template-...


def make_dags(project: Project) -> None:
    """The DAGs as a user makes them: the stock one, and one from the shipped template."""
    env = base_env()
    stock = project.run(["airflow", "create"], env)
    assert stock.returncode == 0, stock.stdout + stock.stderr
    found = subprocess.run(
        [str(AIRFLOW_PYTHON), "-m", "kedro_vertex_hooks.templates"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    template = found.stdout.strip()
    assert Path(template).is_file(), found.stdout
    (project.root / "conf" / TEMPLATE_ENV).mkdir()
    options = ["-e", TEMPLATE_ENV, "-t", "airflow_dags/template"]
    params = f"dag_id={WITH_FINALIZE},retries=0"
    made = project.run(["airflow", "create", "-j", template, *options, "--params", params], env)
    assert made.returncode == 0, made.stdout + made.stderr


def search_runs(client: Any, job_id: str) -> list[Any]:
    """MLflow runs of all experiments tagged with a DAG run's id."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.{TAG_JOB_ID} = '{job_id}'")


def kill_mid_node(airflow: Airflow, client: Any, dag_id: str, run_id: str, node: str) -> None:
    """SIGKILL the task process of ``node`` once MLflow shows the node ``running``."""
    task_id = node.replace("_", "-")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        task = airflow.task_instances(dag_id, run_id).get(task_id, {})
        if task.get("state") in ("success", "failed", "upstream_failed"):
            break  # ended before it could be killed
        runs = search_runs(client, f"{dag_id}/{run_id}") if task.get("state") == "running" else []
        if (
            runs
            and task.get("pid")
            and node_statuses(client, runs[0].info.run_id).get(node) == "running"
        ):
            assert os.getsid(task["pid"]) == airflow.session  # ours to kill
            os.kill(task["pid"], signal.SIGKILL)
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} not killed mid-node\n{airflow.task_logs(dag_id, run_id)}")


@contextlib.contextmanager
def deployed(root: Path) -> Iterator[Deployment]:
    """Airflow and MLflow up, the four DAG runs done; both stopped on leaving."""
    from mlflow import MlflowClient

    project = Project.copy(root / "project", python=AIRFLOW_PYTHON)
    server = MlflowServer(root / "mlflow")
    airflow = Airflow(project, root / "airflow-home", server.uri)
    phases = {  # label: (DAG, DAG run id), by phase
        "clean": {"stock-clean": (STOCK, "clean"), "template-clean": (WITH_FINALIZE, "clean-t")},
        "broken": {
            "stock-failing": (STOCK, "failing"),
            "template-killed": (WITH_FINALIZE, "killed"),
        },
    }
    try:
        with ThreadPoolExecutor(2) as pool:  # side by side: each mostly waits
            waits = [pool.submit(server.start), pool.submit(airflow.migrate)]
            make_dags(project)
            for done in waits:
                done.result()
        airflow.start()
        airflow.wait_for_dags([STOCK, WITH_FINALIZE])
        client = MlflowClient(tracking_uri=server.uri)
        runs: dict[str, DagRun] = {}
        for phase, dag_runs in phases.items():
            if phase == "broken":
                (project.root / "conf" / "local" / "parameters.yml").write_text(FAILING_PARAMS)
                conf = project.root / "conf" / TEMPLATE_ENV / "parameters.yml"
                conf.write_text(SLOW_GATE_PARAMS)
            for dag_id, run_id in dag_runs.values():
                airflow.trigger(dag_id, run_id)
            if phase == "broken":
                killed = dag_runs["template-killed"]
                kill_mid_node(airflow, client, *killed, "quality_gate")
            for label, (dag_id, run_id) in dag_runs.items():
                ended = airflow.wait_for_run(dag_id, run_id)
                runs[label] = DagRun(
                    dag_id=dag_id,
                    run_id=run_id,
                    state=ended["state"],
                    tasks=airflow.task_instances(dag_id, run_id),
                    mlflow_runs=search_runs(client, f"{dag_id}/{run_id}"),
                    logs=airflow.task_logs(dag_id, run_id),
                )
        yield Deployment(client, runs)
    finally:
        with ThreadPoolExecutor(2) as pool:
            for stopped in [pool.submit(airflow.stop), pool.submit(server.stop)]:
                stopped.result()


def check_stock_dag_clean_run_is_one_finished_mlflow_run(deployment: Deployment) -> None:
    dag_run = deployment.runs["stock-clean"]
    assert dag_run.state == "success", dag_run.why()
    run = dag_run.the_run

    assert_finished_with_every_node_completed(deployment.client, run.info.run_id)
    assert run.data.tags[TAG_JOB_ID] == f"{dag_run.dag_id}/{dag_run.run_id}"  # findable
    assert run.data.tags[TAG_JOB_NAME] == STOCK
    assert run.info.run_name == f"{dag_run.run_id} · {STOCK}"  # distinguishing part first
    assert TAG_RUN_NOTE not in run.data.tags  # no finalize in the stock DAG


def check_stock_dag_failing_run_is_one_failed_mlflow_run(deployment: Deployment) -> None:
    dag_run = deployment.runs["stock-failing"]
    assert dag_run.state == "failed", dag_run.why()
    assert dag_run.tasks["quality-gate"]["state"] == "failed", dag_run.why()
    assert dag_run.tasks["quality-gate"]["try_number"] == 2, dag_run.why()  # Airflow retried
    assert dag_run.tasks["publish"]["state"] == "upstream_failed", dag_run.why()
    run = dag_run.the_run

    assert run.info.status == "FAILED", dag_run.why()  # and stayed FAILED through the retry
    tags = run.data.tags
    assert tags[TAG_FAILED_NODE] == "quality_gate"
    assert tags[TAG_ERROR].startswith("ValueError: quality gate rejected the model")
    statuses = node_statuses(deployment.client, run.info.run_id)
    assert statuses["quality_gate"] == "failed"  # on both tries
    assert "publish" not in statuses  # Airflow never ran it
    for name in SAMPLE_NODES[: SAMPLE_NODES.index("quality_gate")]:
        assert statuses[name] == "completed", name
    assert tags[TAG_JOB_ID] == f"{dag_run.dag_id}/{dag_run.run_id}"
    assert tags[TAG_JOB_NAME] == STOCK


def assert_finalize_ran_as_teardown(dag_run: DagRun) -> None:
    """start-run before every node task, finalize after all of them, both succeeded."""
    tasks = dag_run.tasks
    setup, teardown = tasks[SETUP_TASK], tasks[TEARDOWN_TASK]
    assert setup["state"] == teardown["state"] == "success", dag_run.why()
    for task, ti in tasks.items():
        if task in (SETUP_TASK, TEARDOWN_TASK):
            continue
        if ti["start_date"]:
            assert ti["start_date"] >= setup["end_date"], (task, dag_run.why())
        if ti["end_date"]:
            assert ti["end_date"] <= teardown["start_date"], (task, dag_run.why())


def check_template_clean_run_is_finished_and_summarised_by_the_teardown(
    deployment: Deployment,
) -> None:
    dag_run = deployment.runs["template-clean"]
    assert dag_run.state == "success", dag_run.why()
    assert_finalize_ran_as_teardown(dag_run)
    run = dag_run.the_run

    assert_finished_with_every_node_completed(deployment.client, run.info.run_id)
    assert run.info.run_name == f"{dag_run.run_id} · {WITH_FINALIZE}"  # start-run names it
    assert run.data.tags[TAG_JOB_NAME] == WITH_FINALIZE
    note = run.data.tags[TAG_RUN_NOTE]  # finalize's summary
    assert note.startswith("**FINISHED**: the pipeline succeeded  \n13 of 13 nodes completed")
    job_id = f"{dag_run.dag_id}/{dag_run.run_id}"
    assert f"job id {job_id}" in note.replace("\\", "")  # markdown escapes
    artifacts = [a.path for a in deployment.client.list_artifacts(run.info.run_id)]
    assert TIMELINE_ARTIFACT in artifacts


def check_template_killed_task_is_lost_and_the_run_failed_by_the_teardown(
    deployment: Deployment,
) -> None:
    dag_run = deployment.runs["template-killed"]
    assert dag_run.state == "failed", dag_run.why()
    assert dag_run.tasks["quality-gate"]["state"] == "failed", dag_run.why()
    assert dag_run.tasks["publish"]["state"] == "upstream_failed", dag_run.why()
    assert_finalize_ran_as_teardown(dag_run)  # after a killed task too
    run = dag_run.the_run

    # No node failed: only Airflow's verdict, passed on by the teardown, makes it FAILED.
    assert run.info.status == "FAILED", dag_run.why()
    tags = run.data.tags
    # Started, never ended: the record says running, finalize's summary says lost.
    assert node_statuses(deployment.client, run.info.run_id)["quality_gate"] == "running"
    assert TAG_FAILED_NODE not in tags
    note = tags[TAG_RUN_NOTE]
    assert note.startswith("**FAILED**: the pipeline failed  \n11 of 13 nodes completed, 1 lost")
    assert "**Lost:** quality\\_gate" in note
    assert ["13", "publish", "not run"] in note_node_rows(note)


def check_no_other_run_is_created(deployment: Deployment) -> None:
    mine = {label: dag_run.the_run.info.run_id for label, dag_run in deployment.runs.items()}
    assert len(set(mine.values())) == 4, mine
    # Deleted runs count too: a step that lost a race for the run would have left one.
    assert every_run_id(deployment.client) == set(mine.values())


CHECKS = (
    check_stock_dag_clean_run_is_one_finished_mlflow_run,
    check_stock_dag_failing_run_is_one_failed_mlflow_run,
    check_template_clean_run_is_finished_and_summarised_by_the_teardown,
    check_template_killed_task_is_lost_and_the_run_failed_by_the_teardown,
    check_no_other_run_is_created,
)


@pytest.mark.timeout(900)
def test_kedro_airflow_dags_on_a_real_airflow_3(tmp_path: Path) -> None:
    """Every check, on one deployment. One test, not one per check: pytest-xdist spreads a
    module's tests over its workers, and each worker would start its own Airflow."""
    with deployed(tmp_path) as deployment:
        failures = []
        for check in CHECKS:
            try:
                check(deployment)
            except AssertionError as error:
                failures.append(f"{check.__name__}: {error}")
    assert not failures, "\n\n".join(failures)
