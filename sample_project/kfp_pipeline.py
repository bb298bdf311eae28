"""sample_project as a Kubeflow Pipelines (KFP v2) pipeline, in the shape Vertex AI runs it.

Built from the Kedro pipeline object, not listed by hand: a start step opens the MLflow run,
one step per Kedro node runs ``kedro run --nodes <name>`` with the run id as ``MLFLOW_RUN_ID``
and the pipeline job's id and name as ``KEDRO_CONFIG_RUN_ID`` / ``KEDRO_CONFIG_JOB_NAME``,
Kedro's dependencies become task dependencies, and an exit handler fed with
``dsl.PipelineTaskFinalStatus`` closes the run whatever happened.

Each step runs ``python -m kedro`` in ``project_dir`` with the interpreter that runs the step:
locally (``kfp.local.SubprocessRunner(use_venv=False)``) the current one, on Vertex AI the
project image, which must contain the project, this package and ``kfp``.

    python sample_project/kfp_pipeline.py --compile pipeline.yaml   # spec for Vertex AI

No ``from __future__ import annotations`` here: KFP reads the components' annotations as
objects.
"""

import argparse
from pathlib import Path

from kfp import compiler, dsl

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_IMAGE = "python:3.11"
PIPELINE_NAME = "sample-project"


def _kedro(project_dir: str, kedro_env: str, args: list, env: dict) -> None:
    """Run ``python -m kedro <args>`` in the project; a non-zero exit fails the step."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "kedro", *args]
    if kedro_env:
        command += ["--env", kedro_env]
    merged = {**os.environ, **{k: v for k, v in env.items() if v}}
    code = subprocess.run(command, cwd=project_dir, env=merged, check=False).returncode
    if code:
        raise RuntimeError(f"`kedro {' '.join(args)}` exited with code {code}")


def start_run_step(
    project_dir: str,
    kedro_env: str,
    run_name: str,
    job_id: str,
    job_name: str,
    run_id: dsl.OutputPath(str),
) -> None:
    """Open the pipeline's MLflow run (or find this job's run) and output its id."""
    args = ["vertex-hooks", "start-run", "--output", run_id]
    if run_name:
        args += ["--run-name", run_name]
    _kedro(
        project_dir,
        kedro_env,
        args,
        {"KEDRO_CONFIG_RUN_ID": job_id, "KEDRO_CONFIG_JOB_NAME": job_name},
    )


def kedro_node_step(
    project_dir: str,
    kedro_env: str,
    pipeline: str,
    node: str,
    params: str,
    run_id: str,
    job_id: str,
    job_name: str,
) -> None:
    """One Kedro node in its own process, logging into the shared run."""
    args = ["run", "--pipeline", pipeline, "--nodes", node]
    if params:
        args += ["--params", params]
    _kedro(
        project_dir,
        kedro_env,
        args,
        {"MLFLOW_RUN_ID": run_id, "KEDRO_CONFIG_RUN_ID": job_id, "KEDRO_CONFIG_JOB_NAME": job_name},
    )


def finalize_step(
    project_dir: str,
    kedro_env: str,
    job_id: str,
    job_name: str,
    status: dsl.PipelineTaskFinalStatus,
) -> None:
    """Exit handler: close the job's run with the orchestrator's verdict."""
    _kedro(
        project_dir,
        kedro_env,
        ["vertex-hooks", "finalize", "--status", status.state],
        {"KEDRO_CONFIG_RUN_ID": job_id, "KEDRO_CONFIG_JOB_NAME": job_name},
    )


def kedro_graph(project_dir: Path, pipeline_name: str) -> dict[str, list[str]]:
    """Each node of the Kedro pipeline (in Kedro's run order) with the nodes it waits for."""
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_dir)
    pipeline = pipelines[pipeline_name]
    parents = pipeline.node_dependencies
    return {node.name: sorted(p.name for p in parents[node]) for node in pipeline.nodes}


def build_pipeline(
    project_dir: Path = PROJECT_DIR,
    pipeline_name: str = "__default__",
    base_image: str = DEFAULT_IMAGE,
    install_kfp_package: bool = False,
    image_project_dir: str | None = None,
):
    """The KFP pipeline for ``pipeline_name``, read from the project at ``project_dir``.

    Pipeline parameters: ``params`` goes to every node as ``kedro run --params``
    (``failure.fail=true`` selects the failing variant); ``run_name`` names the MLflow run
    (default: the job name); ``project_dir`` is where the steps find the project
    (``image_project_dir``, default ``project_dir``); ``kedro_env`` is the Kedro env.
    """
    graph = kedro_graph(project_dir, pipeline_name)

    def component(func):
        return dsl.component(
            func,
            base_image=base_image,
            install_kfp_package=install_kfp_package,
            additional_funcs=[_kedro],
        )

    start_op, node_op, finalize_op = map(
        component, (start_run_step, kedro_node_step, finalize_step)
    )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"Kedro pipeline '{pipeline_name}' of sample_project, one step per node.",
    )
    def kedro_pipeline(
        params: str = "",
        run_name: str = "",
        project_dir: str = image_project_dir or str(project_dir),
        kedro_env: str = "",
    ) -> None:
        job = {
            "job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "job_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        }
        where = {"project_dir": project_dir, "kedro_env": kedro_env}
        closing = finalize_op(**where, **job).set_display_name("mlflow-finalize")
        closing.set_caching_options(False)
        with dsl.ExitHandler(closing, name="kedro-pipeline"):
            start = start_op(**where, **job, run_name=run_name)
            start.set_display_name("mlflow-start-run").set_caching_options(False)
            tasks = {}
            for node_name, parents in graph.items():
                task = node_op(
                    **where,
                    **job,
                    pipeline=pipeline_name,
                    node=node_name,
                    params=params,
                    run_id=start.outputs["run_id"],
                )
                task.set_display_name(node_name).set_caching_options(False)
                for parent in parents:
                    task.after(tasks[parent])
                tasks[node_name] = task

    return kedro_pipeline


def compile_pipeline(output: Path, **build_options) -> Path:
    """Write the pipeline spec (YAML) that Vertex AI Pipelines accepts unchanged."""
    compiler.Compiler().compile(build_pipeline(**build_options), str(output))
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", type=Path, required=True, help="YAML file to write")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="project image for the steps")
    parser.add_argument("--project-dir", default=None, help="project path inside the image")
    cli = parser.parse_args()
    print(compile_pipeline(cli.compile, base_image=cli.image, image_project_dir=cli.project_dir))
