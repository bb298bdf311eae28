"""The main job: sample_project's Kedro pipeline as a KFP pipeline on KFP's local runner.

One process per Kedro node, as Vertex AI Pipelines runs it (start step, node steps, exit
handler), offline and without Docker (``kfp.local.SubprocessRunner(use_venv=False)``), into
the project's tracking store (the embedded sqlite file unless conf or ``MLFLOW_TRACKING_URI``
say otherwise). Prints the run id, its status and how to open it in the MLflow UI.

    python scripts/run_kfp_local.py            # clean run: ends FINISHED
    python scripts/run_kfp_local.py --fail     # quality_gate fails: ends FAILED
    python scripts/run_kfp_local.py --verbose  # every log line here, not in a file

It prints a line as each step starts and ends, then the outcome; Kedro's, KFP's and MLflow's
own output goes to a log file it names. Exit code 0 when the run ends as expected (FINISHED,
or FAILED with ``--fail``).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from kedro_vertex_hooks.naming import TAG_RUN_NOTE
from kedro_vertex_hooks.summary import run_page_url

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PROJECT = REPO / "sample_project"
FAILING_PARAMS = "failure.fail=true"


def project_tracking(project_dir: Path) -> tuple[str, str]:
    """Tracking URI and experiment exactly as the project's hooks resolve them."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from kedro_vertex_hooks.config import load_project_config
    from kedro_vertex_hooks.hooks import passive

    bootstrap_project(project_dir)
    with passive(), KedroSession.create(project_path=project_dir) as session:
        config = load_project_config(session.load_context())
    return config.tracking_uri, config.experiment_name


def run_pipeline(project_dir: Path, params: str, run_name: str, workspace: Path) -> None:
    """Run the KFP pipeline locally; a failing step does not raise (the exit handler runs)."""
    from kfp import local

    sys.path.insert(0, str(project_dir))
    from kfp_pipeline import build_pipeline

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workspace),
        raise_on_error=False,
    )
    build_pipeline(project_dir)(params=params, run_name=run_name)


def find_run(tracking_uri: str, experiment_name: str, run_name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{escaped}'"
    )
    return runs[0] if runs else None


def summary_lines(note: str) -> list[str]:
    """The description's first two lines (outcome, counts) as plain text for a terminal."""
    if not note:
        return ["Summary:       (no summary: finalize did not run)"]
    plain = [
        html.unescape(re.sub(r"\\(.)", r"\1", line)).replace("**", "").strip()
        for line in note.splitlines()[:2]
    ]
    return ["Summary:       " + plain[0], *("               " + line for line in plain[1:])]


def run_and_report(project_dir: Path, fail: bool, run_name: str, report: Path | None) -> int:
    """Run the pipeline, find its run, print (or write to ``report``) how it ended."""
    tracking_uri, experiment_name = project_tracking(project_dir)
    with tempfile.TemporaryDirectory(prefix="kfp-local-") as workspace:
        run_pipeline(project_dir, FAILING_PARAMS if fail else "", run_name, Path(workspace))

    run = find_run(tracking_uri, experiment_name, run_name)
    expected = "FAILED" if fail else "FINISHED"
    if run is None:
        lines = [f"No MLflow run named {run_name} at {tracking_uri}: the start step failed."]
    else:
        note = run.data.tags.get(TAG_RUN_NOTE, "")
        lines = [
            f"MLflow run id: {run.info.run_id}",
            f"Status:        {run.info.status} (expected {expected})",
            *summary_lines(note),
            f"Tracking URI:  {tracking_uri}",
        ]
        page = run_page_url(tracking_uri, run.info.experiment_id, run.info.run_id)
        if page:
            lines.append(f"Open it at:    {page}")
        else:
            lines.append(f"Open it with:  mlflow ui --backend-store-uri {tracking_uri}")
            lines.append(f"               then experiment '{experiment_name}', run '{run_name}'")
    text = "\n".join(lines) + "\n"
    if report is None:
        print("\n" + text, end="")
    else:
        report.write_text(text, encoding="utf-8")
    return 0 if run is not None and run.info.status == expected else 1


# What the live view reads in the pipeline's log: KFP's task lines and Kedro's node lines.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_NODE_START = re.compile(r"Running node: ([^:\s]+)")
NODE_TASK_PREFIX = "kedro-node-step"  # kfp_pipeline.py's per-node component


class LiveView:
    """One line when a step starts (its node, once Kedro names it) and one when it ends."""

    def __init__(self, out) -> None:
        self.out = out
        self.task: str | None = None
        self.label = ""
        self.started = 0.0
        self.steps = 0

    def feed(self, line: str) -> None:
        line = _ANSI.sub("", line)
        if found := _TASK_START.search(line):
            self.task, self.started, self.label = found.group(1), time.monotonic(), ""
            if not self.task.startswith(NODE_TASK_PREFIX):
                self._say("started", self.task)
        elif (found := _NODE_START.search(line)) and self.task and not self.label:
            self.label = found.group(1)
            self._say("started", self.label)
        elif found := _TASK_END.search(line):
            self.steps += 1
            seconds = time.monotonic() - self.started
            label = self.label or found.group(1)
            self._say(found.group(2), f"{label:<24} {seconds:5.1f} s")
            self.task = None

    def _say(self, what: str, text: str) -> None:
        print(f"  {what:<9} {text}", file=self.out, flush=True)


def follow(process: subprocess.Popen, log: Path, view: LiveView) -> int:
    """Feed the log's whole lines to the view until the process ends; its exit code. A line
    still being written waits for its end, so that no pattern is matched half-written."""
    pending = ""
    with log.open(encoding="utf-8", errors="replace") as reader:
        while True:
            ended = process.poll() is not None
            pending += reader.read()
            *complete, pending = pending.split("\n")
            for line in complete:
                view.feed(line)
            if ended:
                if pending:
                    view.feed(pending)
                return process.returncode
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail", action="store_true", help=f"run with {FAILING_PARAMS}")
    parser.add_argument("--project-dir", type=Path, default=SAMPLE_PROJECT)
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: unique)")
    parser.add_argument(
        "--verbose", action="store_true", help="print every log line here, not to a file"
    )
    parser.add_argument("--report-to", type=Path, help=argparse.SUPPRESS)  # the child's report
    args = parser.parse_args(argv)

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    project_dir = args.project_dir.resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    # The distinguishing part first: MLflow's runs list cuts long names at the end.
    run_name = args.run_name or f"{stamp}-{uuid.uuid4().hex[:4]}-sample-project"
    if args.verbose or args.report_to:
        return run_and_report(project_dir, args.fail, run_name, args.report_to)

    # Quiet by default: the pipeline runs in a child process whose every line goes to a log
    # file; this one prints a line per step and the outcome.
    logs = Path(tempfile.gettempdir()) / "kedro-vertex-hooks-demo"
    logs.mkdir(exist_ok=True)
    log, report = logs / f"{run_name}.log", logs / f"{run_name}.report"
    how = " with --fail" if args.fail else ""
    print(f"Running sample_project on KFP's local runner{how}, one process per node.")
    print(f"Every log line goes to {log} (--verbose prints them here).")
    child = [sys.executable, __file__, "--project-dir", str(project_dir), "--run-name", run_name]
    child += ["--report-to", str(report), *(["--fail"] if args.fail else [])]
    with log.open("wb") as sink:
        process = subprocess.Popen(child, stdout=sink, stderr=subprocess.STDOUT)
    code = follow(process, log, LiveView(sys.stdout))
    print()
    ended = f"The job stopped (exit {code}) without a report: see {log}.\n"
    print(report.read_text(encoding="utf-8") if report.exists() else ended, end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
