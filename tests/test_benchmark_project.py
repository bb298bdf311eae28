"""The benchmark's generated project is a valid Kedro project with the advertised shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmark.generate_project import (
    CONTENDERS,
    generate_project,
    node_names,
    parameters,
)


def _leaves(value: object) -> int:
    if isinstance(value, dict):
        return sum(_leaves(v) for v in value.values())
    return 1


def test_parameters_are_20_nested_leaves_per_node_and_1000_on_wide() -> None:
    values = parameters()

    assert len(node_names()) == 50
    assert {_leaves(values[name]) for name in node_names()} == {20}
    assert _leaves(values["wide"]) == 1000


def test_generated_project_runs_all_50_named_nodes(tmp_path: Path) -> None:
    project = generate_project(tmp_path / "bench", "none", "http://127.0.0.1:1")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    output = " ".join((done.stdout + done.stderr).split())
    assert "Completed 50 out of 50 tasks" in output
    for name in ("prepare", "branch_d_step_12", "join"):
        assert f"Completed node: {name}" in output
    assert "value" in json.loads((project / "data" / "joined.json").read_text())


def test_each_contender_differs_only_in_settings_and_mlflow_yml(tmp_path: Path) -> None:
    files = {}
    for contender in CONTENDERS:
        root = generate_project(tmp_path / contender, contender, "http://127.0.0.1:5000")
        files[contender] = {
            p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()
        }
    common = set.intersection(*(set(f) for f in files.values()))
    varying = {
        path
        for path in common
        if len({files[c][path] for c in CONTENDERS}) > 1 and path != "pyproject.toml"
    }

    assert varying == {"src/bench_pipeline/settings.py"}
    assert "conf/base/mlflow.yml" not in files["none"]
    assert "MlflowRunHooks()" in files["ours"]["src/bench_pipeline/settings.py"]
    assert "mlflow_tracking_uri: http://127.0.0.1:5000" in files["ours"]["conf/base/mlflow.yml"]
    # kedro-mlflow's documented default (`kedro mlflow init`) unless --mlflow-yml flat
    assert "flatten: False" in files["kedro_mlflow"]["conf/base/mlflow.yml"]
    assert "long_params_strategy: fail" in files["kedro_mlflow"]["conf/base/mlflow.yml"]
