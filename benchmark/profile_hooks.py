"""Where ours spends a step's time: what tracking adds to a one-node step, part by part.

    python benchmark/profile_hooks.py [--latency-ms 25] [--node join] [--repeats 20] [--python PATH]

Runs the benchmark project with ``MlflowRunHooks()`` behind the proxy once in-process and once
as a one-node step with ``MLFLOW_RUN_ID``, and the same step untracked (``HOOKS = ()``). For
the one-node step it prints its CPU time by stage (untracked; the package imported and
``MlflowRunHooks()`` built; the hooks registered with the pipeline not tracked; tracked) over
``--repeats`` runs of each taken in turns, what each stage adds as the median of paired
differences (a slow minute of the machine hits both of a pair), the imports
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
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from generate_project import PACKAGE, generate_project  # noqa: E402
from paired import median_interval  # noqa: E402
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


def cpu_samples(command: list[str], projects: dict, env: dict, repeats: int, proxy) -> dict:
    """project name -> the CPU times (ms) of ``repeats`` runs of ``command`` in it, the
    projects taking turns so that the i-th samples of all of them were taken together."""
    samples: dict[str, list[float]] = {name: [] for name in projects}
    log = BENCHMARK_DIR / "results" / "profile" / "step.log"
    for repeat in range(repeats):
        for name in list(projects)[:: -1 if repeat % 2 else 1]:
            project, step_env = projects[name]
            _, cpu, _ = run_measured(command, project, {**env, **step_env}, log, proxy, name)
            samples[name].append(cpu * 1000)
    return samples


def paired_difference(after: list[float], before: list[float]) -> tuple[float, float, float]:
    """Median of ``after[i] - before[i]`` and its 95 % confidence interval: samples taken
    together, so a slow minute of the machine raises both of a pair and cancels out of their
    difference."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    return statistics.median(differences), *median_interval(differences)


def stage_costs(samples: Mapping[str, list[float]], stages: list[str]) -> list[dict]:
    """Per stage: its least and median CPU, and what it adds to the stage before it."""
    rows = []
    for index, stage in enumerate(stages):
        row = {"stage": stage, "least": min(samples[stage])}
        row["median"] = statistics.median(samples[stage])
        if index:
            row["added"] = paired_difference(samples[stage], samples[stages[index - 1]])
        rows.append(row)
    return rows


def instructions(python: Path, project: Path, args: list[str], env: dict[str, str]) -> float:
    """Instructions the step executes, counted by valgrind's callgrind: unlike CPU time, the
    same for the same work whatever else the machine is doing (and ~40 times slower)."""
    out = project / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python), *args]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        sys.exit(f"{' '.join(command)} failed in {project}:\n{done.stderr[-2000:]}")
    out.unlink()
    return float(found.group(1))


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
    parser.add_argument("--repeats", type=int, default=20, help="runs of each step for CPU")
    parser.add_argument(
        "--count-instructions",
        action="store_true",
        help="also count each stage's instructions under valgrind (two runs each, ~6 min)",
    )
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
        cpu = cpu_samples([str(python), "-m", "kedro", *step], stages, env, args.repeats, proxy)
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
        print(f"\nCPU of the step by stage (user + system, {args.repeats} runs each, in turns):")
        print(
            "\n| stage | least (ms) | median (ms) | added: median of paired differences (ms) "
            "| 95 % CI of that median (ms) |\n|---|---:|---:|---:|---|"
        )
        labels = dict(STAGES)
        for row in stage_costs(cpu, list(labels)):
            added = "{:.0f} | {:.0f} .. {:.0f}".format(*row["added"]) if "added" in row else " | "
            label, least, median = labels[row["stage"]], row["least"], row["median"]
            print(f"| {label} | {least:.0f} | {median:.0f} | {added} |")
        print(
            "\n**Tracking adds {:.0f} ms** to the step (median of the paired differences tracked "
            "- untracked; 95 % CI of the median {:.0f} .. {:.0f} ms).".format(
                *paired_difference(cpu["tracked"], cpu["untracked"])
            )
        )
        if args.count_instructions:
            counts = {
                stage: [
                    instructions(python, project, ["-m", "kedro", *step], {**env, **extra})
                    for _ in range(2)
                ]
                for stage, (project, extra) in stages.items()
            }
            ms_each = statistics.median(cpu["untracked"]) / statistics.median(counts["untracked"])
            print(
                "\nInstructions of the step by stage (valgrind's callgrind, two runs each; "
                "ms: at the untracked step's median CPU time per instruction):"
            )
            print("\n| stage | instructions (M) | added (M) | added (≈ ms) |\n|---|---:|---:|---:|")
            for row in stage_costs(counts, list(labels)):
                added = row["added"][0] if "added" in row else None
                print(
                    f"| {labels[row['stage']]} | {row['median'] / 1e6:.0f} | "
                    + ("| |" if added is None else f"{added / 1e6:.0f} | {added * ms_each:.0f} |")
                )
            total = paired_difference(counts["tracked"], counts["untracked"])[0]
            print(
                f"\n**By instructions, tracking adds {total / 1e6:.0f} M "
                f"(≈ {total * ms_each:.0f} ms)** to the step."
            )
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
