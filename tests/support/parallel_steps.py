"""A pipeline of independent one-node steps, all started at the same moment into one run.

A wide fan-out on Vertex AI starts many ``kedro run --nodes X`` containers at once, each
writing its node's params (and its metrics and tags) to the same MLflow run: the tests
here check that none of it is lost and no step fails on a busy server (sqlite in
tests/test_reliability.py, PostgreSQL in tests/test_postgres.py).

Step ``s`` is node ``step_SS`` taking ``params:step_SS``, ``VALUES_PER_STEP`` ints
(``s * 1000 + i``) that the hooks log as params ``step_SS.pII``. With ``metrics_and_tags``
it also returns them + 0.5 as metrics (``metrics_SS.mpII``) and logs as many tags from its
environment (``step_SS.tag_II``, value ``value-S-I``).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kedro_vertex_hooks.naming import NODE_COMPLETED, TAG_PARAM_CONFLICT
from tests.support.generated_project import generate_project
from tests.support.project import Project
from tests.support.tracked import node_statuses

VALUES_PER_STEP = 50
OUTPUT_TAIL = 4000

_NODES = """
from kedro.pipeline import Pipeline, node


def log_step(params):
    return {f"m{key}": value + 0.5 for key, value in params.items()}


def take_params(params):
    return None  # the hooks log the node's params: all this step has to do


def create_pipeline():
    if WITH_METRICS:
        return Pipeline(
            [
                node(log_step, f"params:step_{s:02d}", f"metrics_{s:02d}", name=f"step_{s:02d}")
                for s in range(STEPS)
            ]
        )
    return Pipeline(
        [
            node(take_params, f"params:step_{s:02d}", None, name=f"step_{s:02d}")
            for s in range(STEPS)
        ]
    )
"""


def node_name(step: int) -> str:
    return f"step_{step:02d}"


def param_value(step: int, index: int) -> int:
    return step * 1000 + index


def _tag_variable(step: int, index: int) -> str:
    return f"STEP_{step:02d}_TAG_{index:02d}"


def step_tags_env(step: int) -> dict[str, str]:
    """Environment variables whose values step ``step`` logs as its tags (``env_tags``)."""
    return {_tag_variable(step, i): f"value-{step}-{i}" for i in range(VALUES_PER_STEP)}


def parallel_steps_project(root: Path, steps: int, *, metrics_and_tags: bool) -> Project:
    """Generate the project of ``steps`` independent nodes (see the module docstring)."""
    parameters = {
        node_name(s): {f"p{i:02d}": param_value(s, i) for i in range(VALUES_PER_STEP)}
        for s in range(steps)
    }
    hook_options = ""
    if metrics_and_tags:
        metric_datasets = tuple(f"metrics_{s:02d}" for s in range(steps))
        env_tags = {
            _tag_variable(s, i): f"{node_name(s)}.tag_{i:02d}"
            for s in range(steps)
            for i in range(VALUES_PER_STEP)
        }
        hook_options = f"metric_datasets={metric_datasets!r}, env_tags={env_tags!r}"
    return generate_project(
        root,
        f"STEPS = {steps}\nWITH_METRICS = {metrics_and_tags}\n{_NODES}",
        hook_options=hook_options,
        conf={"base/parameters.yml": json.dumps(parameters)},  # JSON is YAML
    )


class NiceProject(Project):
    """Steps run under ``nice``: dozens of them at once would otherwise starve the tests of
    the other xdist worker (servers that must start in time, outage timings). Servers start
    in their own session, hence their own scheduling group: as on a real deployment, where
    the tracking server is not on the steps' machine, the steps do not starve it either."""

    def command(self, *args: str) -> list[str]:
        return ["nice", "-n", "10", *super().command(*args)]


@dataclass(frozen=True)
class StepResult:
    node: str
    returncode: int
    output: str

    def tail(self) -> str:
        header = f"--- output of {self.node} (exit {self.returncode}), tail ---\n"
        return header + self.output[-OUTPUT_TAIL:]


def run_all_at_once(
    project: Project,
    steps: int,
    env: Mapping[str, str],
    *,
    tags: bool,
    timeout_s: float,
) -> list[StepResult]:
    """Start every step's process first, then wait for all of them; on the deadline, kill
    those still running and fail with their output so far."""
    processes = []
    for s in range(steps):
        step_env = {**env, **step_tags_env(s)} if tags else dict(env)
        processes.append(project.start(["run", "--nodes", node_name(s)], step_env))
    deadline = time.monotonic() + timeout_s
    results: list[StepResult] = []
    late: list[StepResult] = []
    for s, process in enumerate(processes):
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(StepResult(node_name(s), process.returncode, output))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            late.append(StepResult(node_name(s), process.returncode, output))
    if late:
        raise AssertionError(
            f"{len(late)} step(s) still running after {timeout_s} s: "
            f"{[r.node for r in late]}\n" + "\n".join(r.tail() for r in late[:3])
        )
    return results


def assert_every_step_succeeded(results: list[StepResult]) -> None:
    """Exit code 0, no param conflict and nothing given up in every step. A step may say it
    delivered late ("..., 0 given up"): a busy server is waited for, not given up on."""
    for result in results:
        assert result.returncode == 0, result.tail()
        assert "already logged" not in result.output, result.tail()
        assert not re.search(r"[1-9][0-9]* given up", result.output), result.tail()


def assert_run_holds_every_step(
    client, run_id: str, results: list[StepResult], *, metrics_and_tags: bool
) -> None:
    """The run as a user opens it: FINISHED, every node completed, every value there."""
    outputs = {result.node: result for result in results}
    run = client.get_run(run_id)
    data = run.data
    order = [node_name(s) for s in range(len(results))]  # Kedro's order: by name
    statuses = node_statuses(client, run_id, order)
    for s in range(len(results)):
        node = node_name(s)
        where = outputs[node].tail()
        assert statuses.get(node) == NODE_COMPLETED, where
        for i in range(VALUES_PER_STEP):
            key = f"{node}.p{i:02d}"
            assert data.params.get(key) == str(param_value(s, i)), f"{key}\n{where}"
            if metrics_and_tags:
                metric = f"metrics_{s:02d}.mp{i:02d}"
                assert data.metrics.get(metric) == param_value(s, i) + 0.5, f"{metric}\n{where}"
                tag = f"{node}.tag_{i:02d}"
                assert data.tags.get(tag) == f"value-{s}-{i}", f"{tag}\n{where}"
    assert len(data.params) == len(results) * VALUES_PER_STEP
    assert not [key for key in data.tags if key.startswith(TAG_PARAM_CONFLICT)], data.tags
    assert run.info.status == "FINISHED", run.info
