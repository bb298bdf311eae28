"""sample_project as a kedro-vertexai user has it: compiled by kedro-vertexai, run task by task.

The "image" is ``.venv-vertexai`` (made by scripts/bootstrap.sh): kedro-vertexai 1.0.0 with
its ``[mlflow]`` extra (MLflow 2.x, kedro-mlflow 1.x), kedro-datasets, this package and
sample_project, exactly as ``pip`` resolves them together.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.project import REPO, Project, base_env, load_script

VERTEXAI_VENV = REPO / ".venv-vertexai"
VERTEXAI_PYTHON = VERTEXAI_VENV / "bin" / "python"
COMPILE = Path(__file__).with_name("vertexai_compile.py")
ENV = "vertexai"  # sample_project/conf/vertexai: vertexai.yml and kedro-mlflow's mlflow.yml
USER_SETTINGS = '''"""A kedro-vertexai project's settings, plus kedro-vertex-hooks' one line."""

from kedro_vertex_hooks import MlflowRunHooks

HOOKS = (MlflowRunHooks(),)

CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}
'''
TAG_GROUPING = """  grouping:
    cls: kedro_vertexai.grouping.TagNodeGrouper
    params:
      tag_prefix: "group."
"""
# train_tree with leaf size 0 and 2**20 buckets steps through its rows by 0: ValueError.
FAILING_TREE = ("max_depth: 3", "max_depth: 20"), ("leaf: 2", "leaf: 0")


executor = load_script(REPO / "scripts" / "run_vertexai_spec.py")


def vertexai_project(
    destination: Path,
    grouping: bool = False,
    failing: bool = False,
    header_provider: dict | None = None,
) -> Project:
    """A copy of sample_project with the user's settings.py; on request grouping by
    ``group.*`` tags, a failing ``train_tree`` (parameters are compiled into the spec) and a
    ``server.request_header_provider`` entry in kedro-mlflow's mlflow.yml."""
    project = Project.copy(destination, VERTEXAI_PYTHON)
    (destination / "src" / "sample_project" / "settings.py").write_text(USER_SETTINGS)
    if header_provider is not None:
        mlflow_yml = destination / "conf" / ENV / "mlflow.yml"
        config = yaml.safe_load(mlflow_yml.read_text())
        config["server"]["request_header_provider"] = header_provider
        mlflow_yml.write_text(yaml.safe_dump(config))
    if grouping:
        config = destination / "conf" / ENV / "vertexai.yml"
        text = config.read_text()
        start = text.index("  grouping:\n")
        end = text.index("  resources:\n")
        config.write_text(text[:start] + TAG_GROUPING + text[end:])
    if failing:
        parameters = destination / "conf" / "base" / "parameters.yml"
        text = parameters.read_text()
        for old, new in FAILING_TREE:
            assert old in text, old
            text = text.replace(old, new)
        parameters.write_text(text)
    return project


def compile_spec(project: Project, params: str = "") -> Path:
    """``kedro vertexai -e vertexai compile [--params name:type,...]`` in the project; the
    spec it wrote."""
    output = project.root / "pipeline.yaml"
    command = [str(VERTEXAI_PYTHON), str(COMPILE), "vertexai", "-e", ENV, "compile"]
    result = subprocess.run(
        [*command, "-o", str(output), *(["--params", params] if params else [])],
        cwd=project.root,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and output.exists(), (result.stdout + result.stderr)[-4000:]
    return output


def step_nodes(task) -> list[str]:
    """The Kedro nodes a compiled task runs (``--nodes "a,b"``); none for the start step."""
    found = re.search(r'--nodes "([^"]+)"', " ".join(task.args))
    return found.group(1).split(",") if found else []
