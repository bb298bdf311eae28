"""Beside kedro-mlflow: its hook active as its docs set it up, its datasets in the catalog
(sample_project's `kedro_mlflow` env), and still one shared run that tells the truth."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kedro.io import DataCatalog
from kedro_mlflow.io.artifacts import MlflowArtifactDataset
from kedro_mlflow.io.metrics import (
    MlflowMetricDataset,
    MlflowMetricHistoryDataset,
    MlflowMetricsHistoryDataset,
)

from kedro_vertex_hooks.kedro_mlflow_compat import point_datasets_at_run
from kedro_vertex_hooks.naming import (
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_LATEST_NODE,
    TAG_PARAM_CONFLICT,
    node_key,
)
from tests.support.project import FULL_PYTHON, SAMPLE_NODES, Project, base_env
from tests.support.tracked import artifact_json, every_run_id, local_json, node_statuses

ENV = "kedro_mlflow"

# What a kedro-mlflow user's settings.py holds: our hooks, kedro-mlflow's hook NOT disabled.
SETTINGS_WITH_KEDRO_MLFLOW_ACTIVE = """
from kedro_vertex_hooks import MlflowRunHooks

HOOKS = (MlflowRunHooks(),)
"""

# kedro-mlflow logs this line from its after_context_created: proof that its hook ran.
KEDRO_MLFLOW_HOOK_RAN = "Registering new custom resolver: 'km.random_name'"

# Nothing logs unflattened dicts or unmasked secrets (kedro-mlflow's own param logging would).
FLAT_PARAMS = {
    "data.seed": "42",
    "model.linear.regularization.l2": "0.01",
    "model.tree.min_samples.leaf": "2",
    "report.api_token": "***",
}
UNFLATTENED_KEYS = {"data", "model.linear", "model.tree", "report", "failure"}


def configure_mlflow_yml(project: Project, **server_and_tracking: dict) -> None:
    """Edit the env's mlflow.yml (as `kedro mlflow init` wrote it) like a user would."""
    path = project.root / "conf" / ENV / "mlflow.yml"
    config = yaml.safe_load(path.read_text())
    for section, values in server_and_tracking.items():
        for dotted, value in values.items():
            target = config[section]
            *parents, leaf = dotted.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    path.write_text(yaml.safe_dump(config))


def activate_kedro_mlflow(project: Project, tracking_uri: str, experiment: str) -> None:
    (project.root / "src" / "sample_project" / "settings.py").write_text(
        SETTINGS_WITH_KEDRO_MLFLOW_ACTIVE
    )
    configure_mlflow_yml(
        project,
        server={"mlflow_tracking_uri": tracking_uri},
        tracking={"experiment.name": experiment},
    )


def kedro_mlflow_param_keys(project: Project, recursive: bool, sep: str) -> set[str]:
    """The param keys kedro-mlflow's own hook writes for sample_project's param inputs."""
    from kedro_mlflow.framework.hooks.utils import _flatten_dict
    from sample_project.pipelines.training.pipeline import create_pipeline

    parameters = yaml.safe_load((project.root / "conf" / "base" / "parameters.yml").read_text())
    keys: set[str] = set()
    for name in create_pipeline().inputs():
        if name.startswith("params:"):
            value = parameters
            for part in name.removeprefix("params:").split("."):
                value = value[part]
            keys |= set(_flatten_dict({name.removeprefix("params:"): value}, recursive, sep))
    return keys


def assert_ok(result) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def drop_artifact_dataset(project: Project) -> None:
    """kedro-mlflow's MlflowArtifactDataset cannot be pickled, so ParallelRunner refuses it
    (a kedro-mlflow limitation): under ParallelRunner the env keeps its metric datasets only."""
    catalog_path = project.root / "conf" / ENV / "catalog.yml"
    catalog = yaml.safe_load(catalog_path.read_text())
    del catalog["report"]
    catalog_path.write_text(yaml.safe_dump(catalog))


def assert_kedro_mlflow_metrics(run, project: Project) -> None:
    linear = local_json(project.root, "linear_metrics")
    tree = local_json(project.root, "tree_metrics")
    metrics = run.data.metrics
    assert metrics["model_scores.linear_mae"] == linear["mae"]  # MlflowMetricsHistoryDataset
    assert metrics["model_scores.tree_mae"] == tree["mae"]
    assert metrics["best_score"] == min(linear["mae"], tree["mae"])  # MlflowMetricDataset


def assert_kedro_mlflow_report(client, run, project: Project, tmp_path: Path) -> None:
    downloaded = artifact_json(client, run.info.run_id, "report.json", tmp_path / "download")
    assert downloaded == local_json(project.root, "report")  # MlflowArtifactDataset


def test_per_node_steps_beside_an_active_kedro_mlflow_hook(client, mlflow_server, tmp_path):
    project = Project.copy(tmp_path / "project", python=FULL_PYTHON)
    experiment = "kedro-mlflow-active"
    activate_kedro_mlflow(project, mlflow_server.uri, experiment)
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="pipeline-job-42", tags={TAG_JOB_ID: "job-42"})
    run_id = run.info.run_id
    runs_before = every_run_id(client)
    env = base_env(
        MLFLOW_RUN_ID=run_id, KEDRO_CONFIG_RUN_ID="job-42", KEDRO_CONFIG_JOB_NAME="nightly"
    )

    def step(*nodes: str, extra: tuple[str, ...] = ()) -> str:
        output = assert_ok(project.run_nodes(nodes, env, "--env", ENV, *extra))
        statuses.append(client.get_run(run_id).info.status)
        return output

    statuses: list[str] = []
    first = step(*SAMPLE_NODES[:10])  # up to select_model, in one process
    assert KEDRO_MLFLOW_HOOK_RAN in first
    step("write_report", extra=("--async",))  # saved from another thread (kedro-mlflow#646)
    rerun = step("write_report", extra=("--params", "report.title=Rerun title"))  # a retry
    step("quality_gate", "publish")

    assert statuses == ["RUNNING"] * 3 + ["FINISHED"]
    assert "Changing param values" not in rerun
    run = client.get_run(run_id)
    assert run.info.run_name == "pipeline-job-42"  # never renamed to __default__
    assert run.data.tags[TAG_JOB_ID] == "job-42"
    assert run.data.tags[TAG_JOB_NAME] == "nightly"
    assert run.data.tags[TAG_LATEST_NODE] == "publish"
    assert "kedro_command" not in run.data.tags  # kedro-mlflow's run tags never landed
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")
    assert run.data.params["report.title"] == "Sample project report"
    assert run.data.tags[node_key(TAG_PARAM_CONFLICT, "report.title")] == "Rerun title"
    for key, value in FLAT_PARAMS.items():
        assert run.data.params[key] == value, key
    assert not UNFLATTENED_KEYS & set(run.data.params)
    assert_kedro_mlflow_metrics(run, project)
    assert_kedro_mlflow_report(client, run, project, tmp_path)
    assert local_json(project.root, "report")["title"] == "Rerun title"  # the rerun's upload
    assert every_run_id(client) == runs_before  # no extra run, in any experiment

    # Another pipeline job over the same data: a failing step, then a later one.
    failing = client.create_run(experiment_id, run_name="pipeline-job-43").info.run_id
    env["MLFLOW_RUN_ID"] = failing
    gate = project.run_nodes(["quality_gate"], env, "--env", ENV, "--params", "failure.fail=true")
    assert gate.returncode != 0
    assert client.get_run(failing).info.status == "FAILED"
    assert_ok(project.run_nodes(["publish"], env, "--env", ENV))
    run = client.get_run(failing)
    assert run.info.status == "FAILED"  # kedro-mlflow would have ended it FINISHED
    assert run.info.run_name == "pipeline-job-43"
    assert run.data.tags["kedro.failed_node"] == "quality_gate"


@pytest.mark.parametrize(
    ("runner", "mp_context"), [("ThreadRunner", None), ("ParallelRunner", "fork")]
)
def test_runners_beside_an_active_kedro_mlflow_hook(
    client, mlflow_server, tmp_path, runner, mp_context
):
    project = Project.copy(tmp_path / "project", python=FULL_PYTHON)
    experiment = f"kedro-mlflow-{runner}"
    activate_kedro_mlflow(project, mlflow_server.uri, experiment)
    dict_params = {"flatten": True, "recursive": False, "sep": "/"}
    configure_mlflow_yml(project, tracking={"params.dict_params": dict_params})
    if mp_context:
        drop_artifact_dataset(project)
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    runs_before = every_run_id(client)

    env = base_env(MLFLOW_RUN_ID=run_id, **({"KEDRO_MP_CONTEXT": mp_context} if mp_context else {}))
    assert KEDRO_MLFLOW_HOOK_RAN in assert_ok(
        project.run(["run", "--env", ENV, "--runner", runner], env)
    )

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # mlflow.yml's tracking.params honoured: the keys kedro-mlflow itself would have written.
    assert set(run.data.params) == kedro_mlflow_param_keys(project, recursive=False, sep="/")
    assert run.data.params["model.linear/regularization"] == "{'l2': 0.01, 'l1': 0.0}"
    assert run.data.params["report/api_token"] == "***"
    assert not UNFLATTENED_KEYS & set(run.data.params)  # its hook stayed idle in workers
    assert_kedro_mlflow_metrics(run, project)
    if not mp_context:
        assert_kedro_mlflow_report(client, run, project, tmp_path)
    assert every_run_id(client) == runs_before


def test_parallel_spawn_workers_log_hook_options_and_kedro_mlflow_metrics(
    client, mlflow_server, tmp_path
):
    """sample_project's own settings (hook options, kedro-mlflow disabled), which spawned
    workers never load: kedro-mlflow's hook is registered there anyway and must stay idle."""
    project = Project.copy(tmp_path / "project", python=FULL_PYTHON)
    drop_artifact_dataset(project)  # the report goes through the hook option instead
    run_id = client.create_run(client.create_experiment("kedro-mlflow-spawn")).info.run_id
    runs_before = every_run_id(client)

    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_RUN_ID=run_id)
    env["KEDRO_MP_CONTEXT"] = "spawn"
    assert_ok(project.run(["run", "--env", ENV, "--runner", "ParallelRunner"], env))

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert node_statuses(client, run_id) == dict.fromkeys(SAMPLE_NODES, "completed")
    for key, value in FLAT_PARAMS.items():
        assert run.data.params[key] == value, key
    assert not UNFLATTENED_KEYS & set(run.data.params)
    linear = local_json(project.root, "linear_metrics")
    tree = local_json(project.root, "tree_metrics")
    metrics = run.data.metrics
    assert metrics["linear_metrics.mae"] == linear["mae"]  # hook option metric_datasets
    assert metrics["tree_metrics.rows"] == tree["rows"]
    assert_kedro_mlflow_metrics(run, project)
    downloaded = artifact_json(client, run_id, "report/report.json", tmp_path / "download")
    assert downloaded == local_json(project.root, "report")  # hook option artifact_datasets
    assert every_run_id(client) == runs_before


def test_datasets_that_name_no_run_are_pointed_at_the_shared_run_and_named_like_kedro_mlflow():
    own_run = "0" * 32
    catalog = DataCatalog(
        {
            "report": MlflowArtifactDataset(
                dataset={"type": "sample_project.datasets.JSONFile", "filepath": "report.json"}
            ),
            "best_score": MlflowMetricDataset(),
            "loss_curve": MlflowMetricHistoryDataset(key="loss"),
            "scores": MlflowMetricsHistoryDataset(),
            "pinned": MlflowMetricDataset(key="pinned", run_id=own_run),
        }
    )
    names = ["report", "best_score", "loss_curve", "scores", "pinned", "params:x", "unknown"]

    pointed = point_datasets_at_run(catalog, names, "f" * 32)

    assert pointed == ["report", "best_score", "loss_curve", "scores"]
    for name in pointed:
        assert catalog.get(name).run_id == "f" * 32, name
    assert catalog.get("pinned").run_id == own_run  # a run named in the catalog is kept
    assert catalog.get("best_score").key == "best_score"  # kedro-mlflow's hook would do so
    assert catalog.get("loss_curve").key == "loss"
    assert catalog.get("scores")._prefix == "scores"
