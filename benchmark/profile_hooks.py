"""Where ours spends a step's time: what tracking adds to a one-node step, part by part.

    python benchmark/profile_hooks.py [--latency-ms 25] [--node join] [--python PATH]

Runs the benchmark project with ``MlflowRunHooks()`` behind the proxy once in-process and once
as a one-node step with ``MLFLOW_RUN_ID``, and the same step untracked (``HOOKS = ()``). For
the one-node step it prints its CPU time by stage (untracked; the package imported and
``MlflowRunHooks()`` built; the hooks registered with the pipeline not tracked; tracked), each
the least of ``--repeats`` runs taken in turns (interference only ever adds time), the imports
tracking adds (modules the untracked step does not import, their own import time summed by
top-level package), each hook's wall time under ``cProfile`` (network waits included), and
the requests the proxy saw.

``--python`` runs the steps in another interpreter, e.g. ``.venv-vertexai/bin/python``:
kedro-vertexai's image, whose untracked step already loads kedro-vertexai's and kedro-mlflow's
CLI plugins. By default the steps run in an environment holding only this
package's requirements (the bare image).
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from generate_project import PACKAGE, generate_project  # noqa: E402
from run import (  # noqa: E402
    BASELINE,
    BENCHMARK_DIR,
    OURS,
    base_environment,
    make_environment,
    package_revision,
    run_measured,
)

from tests.support.mlflow_server import MlflowServer  # noqa: E402
from tests.support.proxy import MlflowProxy  # noqa: E402

HOOKS_FILE = "kedro_vertex_hooks/hooks.py"


def hook_times(profile: Path) -> dict[str, tuple[int, float]]:
    """hook -> (calls, cumulative ms) for the public hook methods in hooks.py."""
    stats = pstats.Stats(str(profile))
    rows = {}
    for (filename, _, function), (_, calls, _, cumulative, _) in stats.stats.items():
        if filename.endswith(HOOKS_FILE) and function.isidentifier() and function[0].islower():
            rows[function] = (calls, round(cumulative * 1000, 1))
    return rows


def imported_modules(importtime_log: str) -> dict[str, float]:
    """module -> its own import time (ms), from ``python -X importtime``'s report."""
    found: dict[str, float] = {}
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if own.isdigit():
                found[name.strip()] = found.get(name.strip(), 0.0) + int(own) / 1000
    return found


def added_imports(tracked: Mapping[str, float], untracked: Mapping[str, float]) -> list:
    """(top-level package, modules, own ms summed) of the modules only the tracked step
    imports, costliest first."""
    by_package: dict[str, list[float]] = {}
    for name, own_ms in tracked.items():
        if name not in untracked:
            by_package.setdefault(name.split(".")[0], []).append(own_ms)
    rows = [(package, len(times), round(sum(times), 1)) for package, times in by_package.items()]
    return sorted(rows, key=lambda row: -row[2])


def run_step(python: Path, project: Path, args: list[str], env: dict[str, str], *prefix: str):
    done = subprocess.run(
        [str(python), *prefix, *args], cwd=project, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(args)} failed in {project}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done


def least_cpu_ms(command: list[str], projects: dict, env: dict, repeats: int, proxy) -> dict:
    """project name -> the least CPU time (ms) of ``repeats`` runs of ``command`` in it,
    the projects taking turns so that slow minutes of the machine hit both."""
    least: dict[str, float] = {}
    log = BENCHMARK_DIR / "results" / "profile" / "step.log"
    for repeat in range(repeats):
        for name in list(projects)[:: -1 if repeat % 2 else 1]:
            project, step_env = projects[name]
            _, cpu, _ = run_measured(command, project, {**env, **step_env}, log, proxy, name)
            least[name] = min(least.get(name, cpu * 1000), cpu * 1000)
    return least


STAGES = (
    ("untracked", "`HOOKS = ()`"),
    ("imported", "+ `MlflowRunHooks()` built in settings.py, not registered"),
    ("registered", "+ registered, the pipeline listed in `disable_tracking.pipelines`"),
    ("tracked", "+ tracking the step into the run (`MLFLOW_RUN_ID`)"),
)


def cost_stages(work: Path, tracked: Path, untracked: Path, run_id: str) -> dict:
    """stage -> (project, extra environment): the tracked project taken apart, so that the
    CPU of each stage is the difference to the one before."""
    settings = Path("src") / PACKAGE / "settings.py"
    imported = work / "stage-imported"
    registered = work / "stage-registered"
    for stage in (imported, registered):
        shutil.copytree(tracked, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data"))
    (imported / settings).write_text(
        (tracked / settings)
        .read_text()
        .replace("HOOKS = (MlflowRunHooks(),)", "_ = MlflowRunHooks()")
    )
    mlflow_yml = registered / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(
        mlflow_yml.read_text().replace(
            "tracking:\n", "tracking:\n  disable_tracking:\n    pipelines: [__default__]\n", 1
        )
    )
    return {
        "untracked": (untracked, {}),
        "imported": (imported, {}),
        "registered": (registered, {}),
        "tracked": (tracked, {"MLFLOW_RUN_ID": run_id}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--node", default="join")
    parser.add_argument("--python", help="interpreter of the steps (default: the bare image)")
    parser.add_argument("--repeats", type=int, default=10, help="runs of each step for CPU")
    args = parser.parse_args()
    work = BENCHMARK_DIR / "results" / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = MlflowServer(work / "server").start()
    proxy = MlflowProxy(server.uri, latency_s=args.latency_ms / 1000).start()
    try:
        from mlflow import MlflowClient

        python = Path(args.python) if args.python else make_environment(work, OURS)[0]
        image = args.python or "bare image (this package's requirements only)"
        data = work / "data"
        tracked = generate_project(work / "tracked", OURS, proxy.uri, data_dir=data)
        untracked = generate_project(work / "untracked", BASELINE, proxy.uri, data_dir=data)
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("profile")).info.run_id
        env = base_environment()
        step_env = {**env, "MLFLOW_RUN_ID": run_id}
        step = ["run", "--nodes", args.node]

        proxy.reset_stats()
        started = time.perf_counter()
        run_step(python, tracked, ["-m", "kedro", "run"], env)  # also makes the step's inputs
        wall = time.perf_counter() - started
        proxy.wait_idle()
        in_process = proxy.reset_stats()
        print(f"# Where a step's time goes: {image}, proxy {args.latency_ms:g} ms")
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = " ".join(["python benchmark/profile_hooks.py", *sys.argv[1:]])
        print(
            f"\n`{command}` on {when} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
            f"kedro_vertex_hooks at {package_revision()})"
        )
        print(
            f"\nin-process `kedro run` (every node): {wall:.2f} s, {in_process.requests} requests"
        )

        importtimes = {
            name: imported_modules(
                run_step(python, project, ["-X", "importtime", "-m", "kedro", *step], e).stderr
            )
            for name, project, e in (("tracked", tracked, step_env), ("untracked", untracked, env))
        }
        added = added_imports(importtimes["tracked"], importtimes["untracked"])
        stages = cost_stages(work, tracked, untracked, run_id)
        cpu = least_cpu_ms([str(python), "-m", "kedro", *step], stages, env, args.repeats, proxy)
        profile = work / "step.prof"
        run_step(
            python, tracked, ["-m", "cProfile", "-o", str(profile), "-m", "kedro", *step], step_env
        )
        proxy.wait_idle()
        proxy.reset_stats()
        run_step(python, tracked, ["-m", "kedro", *step], step_env)
        proxy.wait_idle()
        traffic = proxy.reset_stats()
        walls = hook_times(profile)

        print(f"\n## one-node step `kedro {' '.join(step)}`")
        print("\nImports tracking adds (not imported by the untracked step):")
        print("\n| package | modules | own import time (ms) |\n|---|---:|---:|")
        for package, modules, ms in added:
            print(f"| {package} | {modules} | {ms} |")
        imports_ms = sum(ms for _, _, ms in added)
        print(f"| **all** | {sum(m for _, m, _ in added)} | **{imports_ms:.1f}** |")
        print("\nHooks (cumulative wall time under cProfile, network waits included):")
        print("\n| hook | calls | wall ms |\n|---|---:|---:|")
        for hook in sorted(walls, key=lambda h: -walls[h][1]):
            print(f"| {hook} | {walls[hook][0]} | {walls[hook][1]} |")
        print(f"\nCPU of the step by stage (user + system, least of {args.repeats} runs each):")
        print("\n| stage | CPU (ms) | added by the stage (ms) |\n|---|---:|---:|")
        previous = None
        for stage, label in STAGES:
            added = "" if previous is None else f"{cpu[stage] - cpu[previous]:.0f}"
            print(f"| {label} | {cpu[stage]:.0f} | {added} |")
            previous = stage
        print(f"\n**Tracking adds {cpu['tracked'] - cpu['untracked']:.0f} ms** to the step.")
        print("\nRequests of one run of the step (no profiler):")
        print("\n| t (ms) | request | status |\n|---:|---|---|")
        first = traffic.records[0].started if traffic.records else 0.0
        for record in traffic.records:
            print(
                f"| {(record.started - first) * 1000:.0f} | {record.endpoint} | {record.status} |"
            )
    finally:
        proxy.stop()
        server.stop()


if __name__ == "__main__":
    main()
