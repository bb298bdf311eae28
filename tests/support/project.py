"""sample_project copied into a temporary folder and run with real `kedro run` processes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
# Made by scripts/bootstrap.sh: the package and sample_project on mlflow-skinny only, the
# image the steps run in unless a test says otherwise (a step there costs ~0.6 CPU-s, against
# ~2 CPU-s beside kedro-mlflow, whose CLI plugin imports the whole of MLflow).
SKINNY_PYTHON = REPO / ".venv-skinny" / "bin" / "python"
# The test runner's own: MLflow 3 in full and kedro-mlflow 2, for the tests about them.
FULL_PYTHON = Path(sys.executable)
SAMPLE_PROJECT = REPO / "sample_project"

# Topological order of sample_project's nodes; the inner tuples can run at the same time.
SAMPLE_STEPS: tuple[tuple[str, ...], ...] = (
    ("make_raw_data",),
    ("clean_data",),
    ("split_train", "split_test", "compute_stats"),
    ("train_linear", "train_tree"),
    ("evaluate_linear", "evaluate_tree"),
    ("select_model",),
    ("write_report",),
    ("quality_gate",),
    ("publish",),
)
SAMPLE_NODES = tuple(name for step in SAMPLE_STEPS for name in step)

# Some of the params every run of sample_project holds (dicts flattened, secrets masked).
EXPECTED_PARAMS = {
    "data.n_rows": "200",
    "data.seed": "42",
    "cleaning.clip.low": "-5.0",
    "model.linear.regularization.l2": "0.01",
    "model.linear.epochs": "40",
    "model.tree.min_samples.leaf": "2",
    "selection.metric": "mae",
    "report.api_token": "***",
    "failure.fail": "False",
}


def load_script(path: Path) -> ModuleType:
    """One of the repository's scripts (not a package module) imported by its path, to test
    its functions; registered in ``sys.modules`` so that its dataclasses can find it."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a pipeline container: telemetry off, no inherited run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "KEDRO_CONFIG_", "KEDRO_VERTEX_HOOKS_"))
    }
    env.update(
        KEDRO_DISABLE_TELEMETRY="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Project:
    """A private copy of sample_project; each ``run`` is a fresh ``kedro run`` process, in the
    client-only image unless ``python`` names another venv's interpreter."""

    def __init__(self, root: Path, python: str | Path | None = None) -> None:
        self.root = root
        self.python = str(python or SKINNY_PYTHON)

    @classmethod
    def copy(cls, destination: Path, python: str | Path | None = None) -> Project:
        shutil.copytree(
            SAMPLE_PROJECT,
            destination,
            ignore=shutil.ignore_patterns("mlflow.db", "__pycache__", "*.json", "mlruns"),
        )
        return cls(destination, python)

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "kedro", *args]

    def start(self, args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.root,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(
        self, args: Sequence[str], env: Mapping[str, str], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.root,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_nodes(
        self, nodes: Sequence[str], env: Mapping[str, str], *extra: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["run", "--nodes", ",".join(nodes), *extra], env)

    def run_together(
        self, steps: Sequence[Sequence[str]], env: Mapping[str, str], *extra: str
    ) -> list[tuple[int, str]]:
        """Start one process per step at the same moment; (exit code, output) of each."""
        processes = [self.start(["run", "--nodes", ",".join(step), *extra], env) for step in steps]
        results = []
        for process in processes:
            output, _ = process.communicate(timeout=180)
            results.append((process.returncode, output))
        return results
