"""Run the pipeline kedro-vertexai compiled, locally: every task as Vertex AI would, no containers.

``kedro vertexai compile -o pipeline.yaml`` writes a KFP pipeline spec whose tasks are bash
commands (kedro-vertexai's start step, then ``kedro run --nodes ...`` per node or group). This
script executes that spec on this machine, the way Vertex AI Pipelines does:

- every task's command exactly as compiled, ``/bin/bash -c``, each in its own process;
- each task in its own copy of the project ("the image"), sharing only ``data/`` (the bucket);
- Vertex's placeholders filled the same way: ``{{$.pipeline_job_uuid}}``,
  ``{{$.pipeline_job_name}}``, a task's output file, and the producer's output as input;
- tasks in dependency order, every ready task started at once; when a task fails, the tasks
  that depend on it are skipped and the others go on (Vertex's default failure policy).

The image is the Python environment whose ``bin`` holds ``kedro`` (``--image-bin``, default:
this interpreter's). Pass the container's environment (e.g. ``MLFLOW_TRACKING_URI``) through
this process's environment or ``--env NAME=VALUE``.

    python scripts/run_vertexai_spec.py pipeline.yaml --project-dir sample_project

Exit code 0 when every task succeeded. Task logs go to ``--workdir`` (a temporary folder by
default), one file per task; one line per task start and end is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

_INPUT = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
_OUTPUT_FILE = re.compile(r"\{\{\$\.outputs\.parameters\['([^']+)'\]\.output_file\}\}")
_SHARED = "data"  # what the tasks share, as they would share a bucket
_NOT_IN_IMAGE = ("data", "mlruns", "mlflow.db", "__pycache__")


@dataclass
class Task:
    """One task of the compiled spec: its command and what it needs first."""

    name: str
    args: list[str]
    command: list[str]
    depends_on: set[str]
    inputs: dict[str, tuple[str, str]]  # parameter -> (producer task, its output key)
    pipeline_inputs: dict[str, str]  # parameter -> the pipeline parameter it takes
    outputs: list[str]


@dataclass
class TaskResult:
    name: str
    returncode: int | None  # None: skipped because a task it depends on failed
    started: float = 0.0
    ended: float = 0.0
    log: Path | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def load_tasks(spec_path: Path) -> dict[str, Task]:
    """The root DAG's tasks of a KFP v2 pipeline spec, with their container commands."""
    spec = yaml.safe_load(spec_path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    tasks = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        inputs = {
            key: (value["taskOutputParameter"]["producerTask"],
                  value["taskOutputParameter"]["outputParameterKey"])
            for key, value in task.get("inputs", {}).get("parameters", {}).items()
            if "taskOutputParameter" in value
        }  # fmt: skip
        pipeline_inputs = {
            key: value["componentInputParameter"]
            for key, value in task.get("inputs", {}).get("parameters", {}).items()
            if "componentInputParameter" in value
        }
        tasks[name] = Task(
            name=name,
            args=list(container.get("args", [])),
            command=list(container.get("command", [])),
            depends_on=set(task.get("dependentTasks", [])),
            inputs=inputs,
            pipeline_inputs=pipeline_inputs,
            outputs=list(component.get("outputDefinitions", {}).get("parameters", {})),
        )
    return tasks


def pipeline_parameters(spec_path: Path, given: Mapping[str, str]) -> dict[str, str]:
    """Values of the pipeline's run-time parameters (``compile --params``): given, or their
    defaults; a parameter with neither is an error naming it."""
    spec = yaml.safe_load(spec_path.read_text())
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    values = {}
    for name, definition in declared.items():
        if name in given:
            values[name] = given[name]
        elif "defaultValue" in definition:
            values[name] = str(definition["defaultValue"])
        elif not definition.get("isOptional"):
            raise SystemExit(
                f"Pipeline parameter {name!r} of {spec_path} has no value: pass "
                f"--parameter {name}=VALUE."
            )
    return values


def fill_placeholders(
    text: str,
    job_id: str,
    job_name: str,
    inputs: Mapping[str, str],
    output_files: Mapping[str, Path],
) -> str:
    """Replace the placeholders Vertex AI fills at run time."""
    text = text.replace("{{$.pipeline_job_uuid}}", job_id)
    text = text.replace("{{$.pipeline_job_name}}", job_name)
    text = _OUTPUT_FILE.sub(lambda m: str(output_files[m.group(1)]), text)
    return _INPUT.sub(lambda m: inputs[m.group(1)], text)


def _image_copy(project_dir: Path, destination: Path, shared: Path) -> Path:
    """The project as a container sees it: its own files, the shared data folder."""
    shutil.copytree(project_dir, destination, ignore=shutil.ignore_patterns(*_NOT_IN_IMAGE))
    (destination / _SHARED).symlink_to(shared, target_is_directory=True)
    return destination


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


def run_spec(
    spec_path: Path,
    project_dir: Path,
    workdir: Path,
    image_bin: Path,
    env: Mapping[str, str],
    job_name: str | None = None,
    job_id: str | None = None,
    parameters: Mapping[str, str] | None = None,
    on_task_end: Callable[[TaskResult], None] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, TaskResult]:
    """Execute every task of the spec; ``on_task_end`` sees each result as it ends, before
    the tasks that wait for it start."""
    tasks = load_tasks(spec_path)
    values = pipeline_parameters(spec_path, parameters or {})
    job_id = job_id or str(uuid.uuid4())
    job_name = job_name or f"{project_dir.name.replace('_', '-')}-{time.strftime('%Y%m%d%H%M%S')}"
    shared = workdir / "bucket"
    if not shared.exists():
        shutil.copytree(project_dir / _SHARED, shared)
    base_env = {**env, "PATH": f"{image_bin}{os.pathsep}{env.get('PATH', os.defpath)}"}
    results: dict[str, TaskResult] = {}
    running: dict[str, tuple[subprocess.Popen[bytes], dict[str, Path]]] = {}

    def start(task: Task) -> None:
        folder = workdir / "tasks" / task.name
        root = _image_copy(project_dir, folder / "project", shared)
        output_files = {key: folder / "outputs" / key for key in task.outputs}
        inputs = {key: values[param] for key, param in task.pipeline_inputs.items()}
        inputs |= {key: results[p].outputs[out] for key, (p, out) in task.inputs.items()}
        args = [fill_placeholders(a, job_id, job_name, inputs, output_files) for a in task.args]
        log = folder / "task.log"
        result = TaskResult(task.name, None, started=time.monotonic(), log=log)
        results[task.name] = result
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [*task.command, *args], cwd=root, env=base_env, stdout=handle,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        running[task.name] = (process, output_files)
        echo(f"{_now()} start  {task.name}")

    def finish(name: str, process: subprocess.Popen[bytes], output_files: dict[str, Path]) -> None:
        result = results[name]
        result.returncode, result.ended = process.returncode, time.monotonic()
        result.outputs = {k: p.read_text().strip() for k, p in output_files.items() if p.exists()}
        seconds = result.ended - result.started
        if process.returncode == 0:
            echo(f"{_now()} ok     {name} ({seconds:.1f} s)")
        else:
            echo(
                f"{_now()} FAILED {name} ({seconds:.1f} s, exit {process.returncode}): {result.log}"
            )
        if on_task_end is not None:
            on_task_end(result)

    pending = dict(tasks)
    finished: dict[str, int | None] = {}  # exit code; None when skipped
    while pending or running:
        for name, task in list(pending.items()):
            if any(d in finished and finished[d] != 0 for d in task.depends_on):
                del pending[name]
                results[name] = TaskResult(name, None)
                finished[name] = None
                echo(f"{_now()} skip   {name} (a task it needs failed)")
            elif all(finished.get(d) == 0 for d in task.depends_on):
                del pending[name]
                start(task)
        if not running:
            break
        time.sleep(0.05)
        for name, (process, output_files) in list(running.items()):
            if process.poll() is not None:
                del running[name]
                finish(name, process, output_files)
                finished[name] = process.returncode
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="the YAML kedro vertexai compile wrote")
    parser.add_argument("--project-dir", type=Path, default=Path.cwd())
    parser.add_argument("--image-bin", type=Path, default=Path(sys.executable).parent)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--job-name", default=None)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of every task (the image's ENV)",
    )
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a run-time pipeline parameter (compile --params)",
    )
    args = parser.parse_args()
    env = {**os.environ, **dict(item.partition("=")[::2] for item in args.env)}
    parameters = dict(item.partition("=")[::2] for item in args.parameter)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vertexai-spec-"))
    print(f"Running {args.spec} from {args.project_dir.resolve()}; task logs in {workdir}")
    results = run_spec(
        args.spec,
        args.project_dir.resolve(),
        workdir,
        args.image_bin,
        env,
        args.job_name,
        parameters=parameters,
    )
    failed = [r.name for r in results.values() if r.returncode not in (0,)]
    print(f"{len(results) - len(failed)} of {len(results)} tasks succeeded" +
          (f"; failed or skipped: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
