"""kedro-mlflow's mlflow.yml keys: each one honoured, or said to be unused when set."""

from __future__ import annotations

import yaml

from kedro_vertex_hooks.config import MlflowYml, ignored_settings, parse_mlflow_yml
from tests.support.generated_project import write_logging_config
from tests.support.project import base_env
from tests.support.tracked import every_run_id


def test_keys_this_package_does_not_use_are_named_only_when_set():
    assert ignored_settings(MlflowYml()) == []
    as_kedro_mlflow_init_writes = parse_mlflow_yml(
        {
            "server": {"mlflow_registry_uri": None},
            "tracking": {
                "experiment": {"restore_if_deleted": True},
                "run": {"id": None, "name": None, "nested": True},
            },
            "ui": {"port": "5000", "host": "127.0.0.1"},
        },
        "mlflow.yml",
    )
    assert ignored_settings(as_kedro_mlflow_init_writes) == []
    customised = parse_mlflow_yml(
        {
            "server": {"mlflow_registry_uri": "databricks-uc"},
            "tracking": {"run": {"name": "nightly"}, "experiment": {"restore_if_deleted": False}},
        },
        "mlflow.yml",
    )
    assert ignored_settings(customised) == [
        "server.mlflow_registry_uri",
        "tracking.experiment.restore_if_deleted",
        "tracking.run",
    ]


def test_a_pipeline_listed_in_disable_tracking_is_not_tracked(
    client, mlflow_server, project, tmp_path
):
    (project.root / "conf" / "local" / "mlflow.yml").write_text(
        yaml.safe_dump(
            {
                "tracking": {
                    "disable_tracking": {"pipelines": ["__default__"]},
                    "run": {"name": "ignored-by-us"},
                }
            }
        )
    )
    runs_before = every_run_id(client)

    logging_config = write_logging_config(tmp_path / "logging.yml")
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, KEDRO_LOGGING_CONFIG=logging_config)
    result = project.run_nodes(["make_raw_data"], env)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert every_run_id(client) == runs_before, "a disabled pipeline created a run"
    assert "tracking.disable_tracking.pipelines: not tracked" in output
    assert "'tracking.run' is set, but kedro-vertex-hooks does not use it" in output
