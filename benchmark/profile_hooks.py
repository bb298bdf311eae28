"""Where ours spends a step's time: wall time per hook, imports, and the requests it sends.

    python benchmark/profile_hooks.py [--latency-ms 25] [--node join]

Runs the benchmark project with ``MlflowRunHooks()`` (ours' environment, behind the proxy) once
in-process and once as a one-node step with ``MLFLOW_RUN_ID``, each under ``cProfile`` (wall
clock) and again under ``-X importtime``, and prints per hook the calls and cumulative time,
the slowest imports the step pays for tracking, and the request sequence the proxy saw.
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from generate_project import generate_project  # noqa: E402
from run import BENCHMARK_DIR, OURS, base_environment, make_environment  # noqa: E402

from tests.support.mlflow_server import MlflowServer  # noqa: E402
from tests.support.proxy import MlflowProxy  # noqa: E402

HOOKS_FILE = "kedro_vertex_hooks/hooks.py"
IMPORTS_OF_INTEREST = ("mlflow", "kedro_vertex_hooks", "pydantic", "google.auth", "requests")


def hook_times(profile: Path) -> list[tuple[str, int, float]]:
    """(hook, calls, cumulative ms) for the hook methods in hooks.py, slowest first."""
    stats = pstats.Stats(str(profile))
    rows = []
    for (filename, _, function), (_, calls, _, cumulative, _) in stats.stats.items():
        if filename.endswith(HOOKS_FILE) and not function.startswith("_"):
            rows.append((function, calls, round(cumulative * 1000, 1)))
    return sorted(rows, key=lambda row: -row[2])


def slow_imports(importtime_log: str) -> list[tuple[str, float]]:
    """Cumulative import time (ms) of the top-level modules tracking brings in."""
    found: dict[str, float] = {}
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        if name in IMPORTS_OF_INTEREST or name.startswith("kedro_vertex_hooks."):
            found[name] = max(found.get(name, 0.0), int(cumulative) / 1000)
    return sorted(found.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--node", default="join")
    args = parser.parse_args()
    work = BENCHMARK_DIR / "results" / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = MlflowServer(work / "server").start()
    proxy = MlflowProxy(server.uri, latency_s=args.latency_ms / 1000).start()
    try:
        from mlflow import MlflowClient

        python, _ = make_environment(work, OURS)
        project = generate_project(work / "project", OURS, proxy.uri)
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment("profile")
        run_id = client.create_run(experiment_id).info.run_id
        cases = [
            ("in-process kedro run (50 nodes)", [], {}),
            (
                f"one-node step --nodes {args.node}",
                ["--nodes", args.node],
                {"MLFLOW_RUN_ID": run_id},
            ),
        ]
        for label, extra_args, extra_env in cases:
            env = {**base_environment(), **extra_env}
            profile = work / "step.prof"
            proxy.reset_stats()
            started = time.perf_counter()
            done = subprocess.run(
                [
                    str(python),
                    "-m",
                    "cProfile",
                    "-o",
                    str(profile),
                    "-m",
                    "kedro",
                    "run",
                    *extra_args,
                ],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - started
            proxy.wait_idle()
            traffic = proxy.reset_stats()
            if done.returncode != 0:
                sys.exit(f"{label} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            importtime = subprocess.run(
                [str(python), "-X", "importtime", "-m", "kedro", "run", *extra_args],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            proxy.reset_stats()
            print(f"\n## {label}: {wall:.2f} s wall under cProfile, {traffic.requests} requests")
            print("\n| hook | calls | cumulative ms (wall) |\n|---|---:|---:|")
            for function, calls, ms in hook_times(profile):
                print(f"| {function} | {calls} | {ms} |")
            print("\n| import | cumulative ms |\n|---|---:|")
            for name, ms in slow_imports(importtime.stderr):
                print(f"| {name} | {ms:.0f} |")
            print("\n| t (ms) | request | status |\n|---:|---|---|")
            first = traffic.records[0].started if traffic.records else 0.0
            for record in traffic.records:
                offset = (record.started - first) * 1000
                print(f"| {offset:.0f} | {record.endpoint} | {record.status} |")
    finally:
        proxy.stop()
        server.stop()


if __name__ == "__main__":
    main()
