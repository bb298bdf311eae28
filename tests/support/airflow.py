"""A real Apache Airflow 3 on 127.0.0.1, from .venv-airflow, serving a project's DAGs.

scheduler, dag-processor and api-server (what ``airflow standalone`` runs, without its
triggerer), started from the project folder: kedro-airflow's DAGs run each task in the
worker's working directory (``project_path = Path.cwd()``). sqlite metadata DB and
LocalExecutor in a throwaway AIRFLOW_HOME; all in one session, stopped with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

from tests.support.mlflow_server import free_port
from tests.support.project import REPO, Project, base_env

AIRFLOW_VENV = REPO / ".venv-airflow"  # made by scripts/bootstrap.sh
AIRFLOW_PYTHON = AIRFLOW_VENV / "bin" / "python"

# What an Airflow admin can impose on every DAG without editing one (cluster policies):
# - no schedule: kedro-airflow's "@once" starts a run the moment a DAG is unpaused, and names
#   it scheduled__<start_date> in every DAG alike; the test triggers each run itself;
# - kedro-airflow's default args retry a failed task once after 5 minutes: after 1 second.
CLUSTER_POLICY = '''"""Test cluster policies: DAGs run when triggered; retries come at once."""

from datetime import timedelta

from airflow.sdk.definitions.timetables.simple import NullTimetable


def dag_policy(dag):
    dag.timetable = NullTimetable()


def task_policy(task):
    task.retry_delay = timedelta(seconds=1)
'''

TERMINAL_RUN_STATES = ("success", "failed")
# Airflow and its ~60 task processes yield the cores to the other xdist worker's tests, which
# have 300 s limits; this test has its own, longer one.
NICE = ("nice", "-n", "10")
# The scheduler's log server would listen on every interface: the API reads the log files.
COMPONENTS = ("api-server", "scheduler --skip-serve-logs", "dag-processor")


def session_pids(session: int) -> list[int]:
    """Every process of a session (from /proc). Airflow puts each task process in a process
    group of its own, but they all stay in the session the components were started in."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # state, ppid, pgrp, session
                pids.append(int(stat.parent.name))
    return pids


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class AirflowError(RuntimeError):
    """Airflow did not start, or a DAG did not do what it was asked in time."""


class Airflow:
    """Airflow 3 serving ``project``'s ``airflow_dags/``; a public REST API without login."""

    def __init__(self, project: Project, home: Path, tracking_uri: str, parallelism: int = 4):
        self.project = project
        self.home = Path(home)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dags_folder = project.root / "airflow_dags"
        self.logs = self.home / "logs"
        self.env = base_env(
            PATH=f"{AIRFLOW_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            MLFLOW_TRACKING_URI=tracking_uri,
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home / 'airflow.db'}",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            # Unpaused, and without a schedule (CLUSTER_POLICY): a DAG runs when triggered.
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            # One LocalExecutor worker per slot, all started up front (the default is 32).
            AIRFLOW__CORE__PARALLELISM=str(parallelism),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__API__BASE_URL=self.url,
            # Tasks report to the api-server: it must be where they look for it.
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),  # one for all components
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",  # loopback, throwaway
            # Parse once at start; re-parsing every 30 s costs a core on this machine.
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="3600",
            AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="1",
            NO_COLOR="1",
        )
        self._process: subprocess.Popen[bytes] | None = None

    # -- life ---------------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """One ``airflow`` CLI command in the project folder, in its own session."""
        return subprocess.run(
            [*NICE, str(AIRFLOW_VENV / "bin" / "airflow"), *args],
            cwd=self.project.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def migrate(self, timeout_s: float = 300) -> None:
        """Create the metadata DB (and write the cluster policy); before ``start``."""
        (self.home / "config").mkdir(parents=True, exist_ok=True)
        (self.home / "config" / "airflow_local_settings.py").write_text(CLUSTER_POLICY)
        migrated = self.airflow("db", "migrate", timeout=timeout_s)
        if migrated.returncode != 0:
            raise AirflowError(f"airflow db migrate failed:\n{migrated.stderr[-3000:]}")

    def start(self, timeout_s: float = 240) -> Airflow:
        """Start the three components (after ``migrate``), wait until the API answers."""
        # One session for all three: bash waits for the first component to exit, so that
        # its exit says one of them died; stop() ends every process of the session.
        script = " ".join(
            f'"$AIRFLOW" {component} > "$AIRFLOW_HOME/{component.split()[0]}.log" 2>&1 &'
            for component in COMPONENTS
        )
        self._process = subprocess.Popen(
            [*NICE, "bash", "-c", f"{script} wait -n; exit 1"],
            cwd=self.project.root,
            env={**self.env, "AIRFLOW": str(AIRFLOW_VENV / "bin" / "airflow")},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AirflowError(f"Airflow's API on {self.url} not up after {timeout_s} s\n{self.tail()}")

    @property
    def session(self) -> int:
        """The session of every process this Airflow started, task processes included."""
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        """SIGTERM the session (components, task workers and tasks), then SIGKILL what is left."""
        if self._process is None:
            return
        _signal_all(session_pids(self.session), signal.SIGTERM)
        deadline = time.monotonic() + 5  # nothing to save: a short grace, then SIGKILL
        while time.monotonic() < deadline and session_pids(self.session):
            time.sleep(0.5)
        _signal_all(session_pids(self.session), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=20)
        self._process = None

    def _check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise AirflowError(f"an Airflow component exited\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of each component's log, for error messages."""
        parts = []
        for log in sorted(self.home.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # -- the public REST API ----------------------------------------------------------------
    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One call of Airflow's public REST API (v2); an error answer raises with its text."""
        response = requests.request(method, f"{self.url}/api/v2{path}", json=body, timeout=30)
        if not response.ok:
            raise AirflowError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json()

    def wait_for_dags(self, dag_ids: Iterable[str], timeout_s: float = 180) -> None:
        """Until the dag-processor has parsed every DAG (an import error fails at once)."""
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise AirflowError("DAG import errors:\n" + json.dumps(errors, indent=1))
            found = {dag["dag_id"] for dag in self.api("GET", "/dags?limit=100")["dags"]}
            if wanted <= found:
                return
            time.sleep(1)
        raise AirflowError(f"DAGs {sorted(wanted)} not parsed after {timeout_s} s\n{self.tail()}")

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 300) -> dict[str, Any]:
        """Until the DAG run has finished (success or failed); the run as the API shows it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            time.sleep(1)
        raise AirflowError(
            f"{dag_id} / {run_id} not finished after {timeout_s} s: "
            f"{self.task_states(dag_id, run_id)}\n{self.task_logs(dag_id, run_id)}"
        )

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The DAG run's task instances by task id (state, try_number, start/end dates)."""
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(dag_id, run_id).items()}

    def task_logs(self, dag_id: str, run_id: str, chars: int = 1500) -> str:
        """Every task's log of one DAG run (the end of each attempt), for assertion messages."""
        folder = self.logs / f"dag_id={dag_id}" / f"run_id={run_id}"
        parts = [f"Airflow task logs of {dag_id} / {run_id} ({folder}):"]
        for log in sorted(folder.glob("task_id=*/attempt=*.log")):
            lines = []
            for line in log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):  # JSON lines, mostly
                    record = json.loads(line)
                    line = f"{record.get('level', '')} {record.get('event', '')}"
                lines.append(re.sub(r" {3,}", "  ", line))  # Kedro's rich columns, unpadded
            text = "\n".join(lines)
            parts.append(f"--- {log.parent.name}/{log.name}\n{text[-chars:]}")
        return "\n".join(parts)
