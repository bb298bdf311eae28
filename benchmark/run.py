"""Benchmark: the cost of tracking a 50-node Kedro pipeline in MLflow, ours vs kedro-mlflow.

    python benchmark/run.py            # defaults: about 8 minutes on 2 busy cores

Starts a real MLflow server (sqlite, ``--workers 1``) behind the loopback proxy of
``tests/support/proxy.py`` (25 ms per request, like a server behind IAP), generates the same
project for each contender (``benchmark/generate_project.py``), and runs, interleaved so that
machine noise hits every contender alike:

* in-process: one ``kedro run`` of the whole 50-node pipeline;
* per node: one ``kedro run --nodes <name>`` process per node with ``MLFLOW_RUN_ID`` (Vertex
  style), on a sample of nodes spread over the pipeline;
* wide: one node with 1000 params (requests needed);
* imports: what ``import kedro_vertex_hooks`` and ``kedro --help`` load.

Each contender runs in its own Python environment made from this venv with symlinks, minus
the tracking plugins it must not see (the baseline has neither kedro-mlflow nor this package
installed, kedro-mlflow's has no kedro_vertex_hooks, ours has no kedro-mlflow), so that a
plugin's import cost lands on its own contender only. Results: a markdown table on stdout and
in ``benchmark/LATEST.md``, everything in ``benchmark/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO = BENCHMARK_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARK_DIR))

from generate_project import (  # noqa: E402
    CONTENDERS,
    EXPERIMENT,
    MLFLOW_YML_PARAMS,
    generate_project,
    node_names,
)

from benchmark.paired import interval_ms, verdict  # noqa: E402
from tests.support.mlflow_server import MlflowServer  # noqa: E402
from tests.support.proxy import MlflowProxy, TrafficStats  # noqa: E402

MLFLOW_YML_WORDS = {
    "init": "as `kedro mlflow init` writes it (dict_params.flatten: False, long_params_strategy: "
    "fail), kedro-mlflow's documented default: each node's nested params are one param; the "
    "1000-param node is not run (both refuse its one too-long param).",
    "flat": "dict_params.flatten: true, long_params_strategy: truncate: each node's 20 nested "
    "params are 20 params (kedro-mlflow then sends one request per param).",
}
BASELINE = "none"
ANCHOR = "kedro_mlflow"
OURS = "ours"
NODES = len(node_names())
WRITE_ENDPOINTS = ("/log-batch", "/log-parameter", "/set-tag", "/log-metric")
WIDE_PARAMS = 1000
# What each contender's environment has installed: these distributions and their dependencies,
# as `pip install` would give (kedro-mlflow needs kedro-datasets without declaring it).
ENV_REQUIREMENTS = {
    "none": ("kedro",),
    "kedro_mlflow": ("kedro", "kedro-mlflow", "kedro-datasets"),
    "ours": ("kedro", "kedro-vertex-hooks"),
    "ours_sync": ("kedro", "kedro-vertex-hooks"),
}


@dataclass
class Sample:
    """One ``kedro run`` process: its wall time and the traffic the proxy saw."""

    contender: str
    mode: str
    repeat: int
    nodes: list[str]
    wall_s: float
    cpu_s: float  # user + system time of the process and its children
    requests: int
    bytes_total: int
    connections: int
    by_endpoint: dict[str, int]
    request_ms_median: float | None  # what one request really cost, server time included
    sequence: list[tuple[float, str, int | None]] = field(default_factory=list)


# -- environments ---------------------------------------------------------------------------
def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(roots: tuple[str, ...], installed: dict[str, metadata.Distribution]) -> set[str]:
    """Names of ``roots`` and of everything they require (markers evaluated), as installed."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, str]] = set()
    todo = [(_canonical(root), "") for root in roots]
    found: set[str] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in installed:
            continue
        seen.add((name, extra))
        found.add(name)
        for raw in installed[name].requires or []:
            requirement = Requirement(raw)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            todo.append((_canonical(requirement.name), ""))
            todo.extend((_canonical(requirement.name), e) for e in requirement.extras)
    return found


def make_environment(
    root: Path, contender: str, requirements: tuple[str, ...] | None = None
) -> tuple[Path, list[str]]:
    """A venv holding only what the contender's requirements install: its python, its dists.

    ``requirements`` replaces ``ENV_REQUIREMENTS[contender]`` (benchmark/scale.py adds
    mlflow-skinny to ours, for ``kedro vertex-hooks finalize``).

    kedro_vertex_hooks itself is copied from the working tree when the environment is made,
    so that edits during a run do not change what is measured.

    Built from this venv with symlinks: a top-level entry of site-packages is linked when a
    wanted distribution owns files in it; entries shared with unwanted distributions (the
    ``mlflow`` folder of mlflow-skinny and mlflow, ``google``) are linked one level deeper.
    """
    env_dir = root / f"env-{contender}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    source = Path(sysconfig.get_paths()["purelib"])
    target = env_dir / source.relative_to(Path(sys.prefix))
    installed = {
        _canonical(d.metadata["Name"]): d for d in metadata.distributions(path=[str(source)])
    }
    requirements = requirements or ENV_REQUIREMENTS[contender]
    missing = [r for r in requirements if _canonical(r) not in installed]
    if missing:
        raise SystemExit(f"{contender} needs {missing} installed here (`pip install -e .`)")
    wanted = _closure(requirements, installed)
    owners: dict[str, set[str]] = {}
    for name, dist in installed.items():
        for file in dist.files or []:
            if file.parts[0] != "..":
                for depth in (1, 2):
                    owners.setdefault("/".join(file.parts[:depth]), set()).add(name)
    for entry, owned_by in owners.items():
        parent = entry.rpartition("/")[0]
        # top level: linked when only wanted distributions own it; one level deeper: linked
        # inside folders that unwanted distributions share
        shared_parent = bool(parent) and not owners[parent] <= wanted
        link = shared_parent if parent else owned_by <= wanted
        if entry.startswith("__editable__"):
            continue  # an editable install would follow the working tree while we measure
        if link and owned_by & wanted and (source / entry).exists():
            (target / entry).parent.mkdir(parents=True, exist_ok=True)
            (target / entry).symlink_to(source / entry)
    if "kedro-vertex-hooks" in wanted:
        shutil.copytree(
            REPO / "kedro_vertex_hooks",
            target / "kedro_vertex_hooks",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return env_dir / "bin" / "python", sorted(wanted)


def package_revision() -> str:
    """The commit of the measured kedro_vertex_hooks, and whether the tree had changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "kedro_vertex_hooks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head} + uncommitted changes" if dirty else head


def base_environment() -> dict[str, str]:
    """The caller's environment without anything that would steer MLflow or Kedro."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "KEDRO_", "GOOGLE_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(KEDRO_DISABLE_TELEMETRY="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


# -- the runner -----------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.pythons: dict[str, Path] = {}
        self.installed: dict[str, list[str]] = {}
        self.projects: dict[str, Path] = {}
        self.env = base_environment()
        self.samples: list[Sample] = []
        self.server: MlflowServer | None = None
        self.proxy: MlflowProxy | None = None
        self.log_count = 0

    # setup
    def setup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        print(f"Starting MLflow server and proxy ({self.args.latency_ms} ms per request)...")
        self.server = MlflowServer(self.work / "server").start()
        self.proxy = MlflowProxy(self.server.uri, latency_s=self.args.latency_ms / 1000).start()
        for contender in self.args.contenders:
            self.pythons[contender], self.installed[contender] = make_environment(
                self.work, contender
            )
            if contender.startswith(OURS):
                subprocess.run(
                    [str(self.pythons[contender]), "-c", "import kedro_vertex_hooks.session"],
                    env=self.env,
                    check=True,
                )
            self.projects[contender] = generate_project(
                self.work / f"project-{contender}",
                contender,
                self.proxy.uri,
                data_dir=self.work / "data",
                mlflow_yml=self.args.mlflow_yml,
            )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.server is not None:
            self.server.stop()

    def direct_client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.server.uri)

    # one process
    def kedro_run(
        self,
        contender: str,
        mode: str,
        repeat: int,
        extra_args: list[str],
        nodes: list[str],
        run_id: str | None = None,
    ) -> Sample:
        env = dict(self.env)
        if run_id:
            env["MLFLOW_RUN_ID"] = run_id
        command = [str(self.pythons[contender]), "-m", "kedro", "run", *extra_args]
        self.log_count += 1
        log = self.logs / f"{self.log_count:04d}-{contender}-{mode}.log"
        wall, cpu, stats = run_measured(
            command, self.projects[contender], env, log, self.proxy, f"{contender} {mode}"
        )
        sample = _sample(contender, mode, repeat, nodes, (wall, cpu), stats)
        self.samples.append(sample)
        return sample

    def new_run(self) -> str:
        client = self.direct_client()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        )
        return client.create_run(experiment_id).info.run_id

    def params_in(self, run_id: str) -> int:
        return len(self.direct_client().get_run(run_id).data.params)

    def latest_run_params(self) -> int:
        client = self.direct_client()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
        return len(runs[0].data.params) if runs else 0

    # phases
    def calibrate(self) -> dict[str, float]:
        """One request's round trip through the proxy and straight to the server."""
        from mlflow import MlflowClient

        run_id = self.new_run()
        timings = {}
        for name, uri in (("proxy", self.proxy.uri), ("direct", self.server.uri)):
            client = MlflowClient(uri)
            client.get_run(run_id)
            laps = []
            for _ in range(20):
                started = time.perf_counter()
                client.get_run(run_id)
                laps.append(time.perf_counter() - started)
            timings[f"get_run_{name}_ms"] = round(statistics.median(laps) * 1000, 1)
        return timings

    def warm_up(self) -> None:
        """Fill the shared data dir and the .pyc caches; not measured."""
        print("Warm-up: one untimed run per contender...")
        self.kedro_run(BASELINE, "warmup", 0, [], node_names())
        for contender in self.args.contenders:
            self.kedro_run(contender, "warmup", 0, ["--nodes", "prepare"], ["prepare"])
        self.samples = [s for s in self.samples if s.mode != "warmup"]

    def in_process(self) -> dict[str, list[int]]:
        params: dict[str, list[int]] = {}
        for repeat in range(max(self.args.repeats, self.args.pairs)):
            turn = in_turn(self.args.contenders, repeat, self.args.repeats)
            for contender in next_to_baseline(turn, repeat):
                sample = self.kedro_run(contender, "in-process", repeat, [], node_names())
                print(
                    f"  in-process #{repeat + 1} {contender}: {sample.wall_s:.2f} s, "
                    f"{sample.requests} requests"
                )
                if contender != BASELINE:
                    params.setdefault(contender, []).append(self.latest_run_params())
        return params

    def per_node(self) -> dict[str, list[int]]:
        names = node_names()
        count = self.args.sample
        sample_nodes = [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]
        params: dict[str, list[int]] = {}
        for repeat in range(max(self.args.node_repeats, self.args.node_pairs)):
            turn = in_turn(self.args.contenders, repeat, self.args.node_repeats)
            run_ids = {c: self.new_run() for c in turn if c != BASELINE}
            for index, name in enumerate(sample_nodes):
                for contender in next_to_baseline(turn, repeat + index):
                    sample = self.kedro_run(
                        contender,
                        "per-node",
                        repeat,
                        ["--nodes", name],
                        [name],
                        run_id=run_ids.get(contender),
                    )
                    print(
                        f"  per-node #{repeat + 1} {name} {contender}: "
                        f"{sample.wall_s:.2f} s, {sample.requests} requests"
                    )
            for contender, run_id in run_ids.items():
                params.setdefault(contender, []).append(self.params_in(run_id))
        return params

    def wide(self) -> dict[str, dict[str, int]]:
        results = {}
        for contender in self.args.contenders:
            if contender == BASELINE:
                continue
            sample = self.kedro_run(contender, "wide", 0, ["--pipeline", "wide"], ["wide"])
            results[contender] = {
                "requests": sample.requests,
                "write_requests": sum(
                    n for e, n in sample.by_endpoint.items() if e.endswith(WRITE_ENDPOINTS)
                ),
                "params_logged": self.latest_run_params(),
            }
            print(f"  wide (1000 params) {contender}: {sample.requests} requests")
        return results

    def imports(self) -> dict[str, Any]:
        """What importing the package and running ``kedro --help`` load, in ours' env."""
        python = str(self.pythons[OURS])
        probe = (
            "import json, sys, time\n"
            "started = time.perf_counter()\n"
            "{statement}\n"
            "print(json.dumps({{'seconds': time.perf_counter() - started,\n"
            "  'mlflow': 'mlflow' in sys.modules,\n"
            "  'google_auth': 'google.auth' in sys.modules}}))\n"
        )
        checks = {}
        for label, statement in (
            ("import kedro_vertex_hooks", "import kedro_vertex_hooks"),
            (
                "settings.py: MlflowRunHooks()",
                "from kedro_vertex_hooks import MlflowRunHooks\nMlflowRunHooks()",
            ),
        ):
            out = subprocess.run(
                [python, "-c", probe.format(statement=statement)],
                cwd=self.projects[OURS],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            )
            checks[label] = json.loads(out.stdout.strip().splitlines()[-1])
        help_run = subprocess.run(
            [python, "-X", "importtime", "-m", "kedro", "--help"],
            cwd=self.projects[OURS],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        loaded = imported_modules(help_run.stderr)
        checks["kedro --help (project with ours)"] = {
            "mlflow": "mlflow" in loaded,
            "google_auth": "google.auth" in loaded,
            "exit_code": help_run.returncode,
        }
        return checks

    def step_imports_mlflow(self) -> dict[str, bool]:
        """Whether a one-node step with ``MLFLOW_RUN_ID`` imports MLflow, per contender."""
        node = node_names()[0]
        found = {}
        for contender in self.args.contenders:
            if contender == BASELINE:
                continue
            env = {**self.env, "MLFLOW_RUN_ID": self.new_run()}
            python = str(self.pythons[contender])
            done = subprocess.run(
                [python, "-X", "importtime", "-m", "kedro", "run", "--nodes", node],
                cwd=self.projects[contender],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            found[contender] = "mlflow" in imported_modules(done.stderr)
        self.proxy.reset_stats()
        return found

    def client_import_s(self, imported: dict[str, bool]) -> dict[str, float]:
        """Importing the MLflow client once Kedro is loaded, in each tracking environment whose
        step imports it (0 where a step does not)."""
        clock = (
            "import time, kedro.framework.session\n"
            "started = time.perf_counter()\n"
            "from mlflow import MlflowClient\n"
            "print(time.perf_counter() - started)\n"
        )
        seconds = {}
        for contender in self.args.contenders:
            if contender == BASELINE:
                continue
            if not imported.get(contender, True):
                seconds[contender] = 0.0
                continue
            laps = []
            for _ in range(3):
                out = subprocess.run(
                    [str(self.pythons[contender]), "-c", clock],
                    cwd=self.projects[contender],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                laps.append(float(out.stdout.strip().splitlines()[-1]))
            seconds[contender] = round(statistics.median(laps), 3)
        return seconds


def imported_modules(importtime_log: str) -> set[str]:
    """Module names a ``python -X importtime`` run printed on stderr."""
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:")
    }


def run_measured(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, proxy: Any, what: str
) -> tuple[float, float, Any]:
    """Run ``command`` to its end, output in ``log``: its wall and user+system CPU seconds
    and what the proxy saw of it. A failure raises with the end of the log."""
    proxy.reset_stats()
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    wall = time.perf_counter() - started
    cpu = _children_cpu_s() - cpu_before
    proxy.wait_idle()
    stats = proxy.reset_stats()
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what}: `{' '.join(command)[:300]}` failed ({log}):\n{tail}")
    return wall, cpu, stats


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sample(
    contender: str,
    mode: str,
    repeat: int,
    nodes: list[str],
    times: tuple[float, float],
    stats: TrafficStats,
) -> Sample:
    first = stats.records[0].started if stats.records else 0.0
    return Sample(
        contender=contender,
        mode=mode,
        repeat=repeat,
        nodes=nodes,
        wall_s=times[0],
        cpu_s=times[1],
        requests=stats.requests,
        bytes_total=stats.bytes_total,
        connections=stats.connections,
        by_endpoint=stats.by_endpoint,
        request_ms_median=(
            round(statistics.median(r.seconds for r in stats.records) * 1000, 1)
            if stats.records
            else None
        ),
        sequence=[
            (round((r.started - first) * 1000, 1), r.endpoint, r.status) for r in stats.records
        ],
    )


# -- analysis -------------------------------------------------------------------------------
def in_turn(contenders: list[str], turn: int, anchor_turns: int) -> list[str]:
    """Who runs in a turn: everyone in the first ``anchor_turns``, then all but kedro-mlflow.
    The extra turns narrow the confidence interval of ours against the baseline; a
    kedro-mlflow turn costs ~10 times as much and its figure only feeds a ratio."""
    return [c for c in contenders if turn < anchor_turns or c != ANCHOR]


def next_to_baseline(contenders: list[str], turn: int) -> list[str]:
    """The order of one turn's runs: the baseline between the tracked contenders, so that each
    is paired with an untracked run right next to it (not 50 s of kedro-mlflow away), and
    reversed every other turn."""
    tracked = [c for c in contenders if c != BASELINE]
    order = [*tracked[:1], BASELINE, *tracked[1:]] if BASELINE in contenders else tracked
    return order if turn % 2 == 0 else order[::-1]


def summarise(
    samples: list[Sample], contenders: list[str], client_import_s: dict[str, float]
) -> list[dict]:
    """Rows per mode and contender; overheads are paired with the baseline run next to them."""
    rows = []
    for mode in ("in-process", "per-node"):
        by_contender = {
            c: [s for s in samples if s.mode == mode and s.contender == c] for c in contenders
        }
        baseline = {(s.repeat, s.nodes[0]): s for s in by_contender[BASELINE]}
        for contender in contenders:
            runs = by_contender[contender]
            if not runs:
                continue
            nodes_per_run = len(runs[0].nodes)
            node_count = sum(len(s.nodes) for s in runs)
            if mode == "in-process":
                totals = [s.wall_s for s in runs]
            else:
                totals = [
                    sum(s.wall_s for s in runs if s.repeat == r)
                    for r in sorted({s.repeat for s in runs})
                ]
            extra = [
                (s.wall_s - baseline[(s.repeat, s.nodes[0])].wall_s) / nodes_per_run for s in runs
            ]
            overhead_ms = statistics.median(extra) * 1000
            interval = interval_ms(extra)
            cpu_extra = [
                (s.cpu_s - baseline[(s.repeat, s.nodes[0])].cpu_s) / nodes_per_run for s in runs
            ]
            import_share_ms = client_import_s.get(contender, 0.0) * 1000 / nodes_per_run
            endpoints: dict[str, float] = {}
            for s in runs:
                for endpoint, n in s.by_endpoint.items():
                    endpoints[endpoint] = endpoints.get(endpoint, 0) + n / node_count
            rows.append(
                {
                    "mode": mode,
                    "contender": contender,
                    "processes": len(runs),
                    "distinct_steps": len({tuple(s.nodes) for s in runs}),
                    "nodes_per_process": nodes_per_run,
                    "wall_min_s": round(min(totals), 2),
                    "wall_median_s": round(statistics.median(totals), 2),
                    "overhead_ms_per_node": round(overhead_ms, 1) if contender != BASELINE else 0.0,
                    "overhead_interval_ms_per_node": interval if contender != BASELINE else None,
                    "pairs": len(extra),
                    "overhead_ms_per_node_excl_client_import": (
                        round(overhead_ms - import_share_ms, 1) if contender != BASELINE else 0.0
                    ),
                    "cpu_overhead_ms_per_node": (
                        round(statistics.median(cpu_extra) * 1000, 1)
                        if contender != BASELINE
                        else 0.0
                    ),
                    "requests_per_node": round(sum(s.requests for s in runs) / node_count, 2),
                    "request_ms_median": _median_or_none(s.request_ms_median for s in runs),
                    "bytes_per_node": round(sum(s.bytes_total for s in runs) / node_count),
                    "connections_per_process": round(
                        statistics.mean(s.connections for s in runs), 2
                    ),
                    "requests_per_node_by_endpoint": {
                        k: round(v, 2) for k, v in sorted(endpoints.items(), key=lambda kv: -kv[1])
                    },
                }
            )
    for row in rows:
        anchor = next(
            (r for r in rows if r["mode"] == row["mode"] and r["contender"] == ANCHOR), None
        )
        if anchor and row["contender"] not in (BASELINE, ANCHOR):
            row["ratio_overhead_vs_kedro_mlflow"] = _ratio(
                row["overhead_ms_per_node"], anchor["overhead_ms_per_node"]
            )
            row["ratio_overhead_excl_import_vs_kedro_mlflow"] = _ratio(
                row["overhead_ms_per_node_excl_client_import"],
                anchor["overhead_ms_per_node_excl_client_import"],
            )
            row["ratio_requests_vs_kedro_mlflow"] = _ratio(
                row["requests_per_node"], anchor["requests_per_node"]
            )
            row["ratio_bytes_vs_kedro_mlflow"] = _ratio(
                row["bytes_per_node"], anchor["bytes_per_node"]
            )
    return rows


def _median_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def _with_interval(row: dict) -> str:
    interval = row.get("overhead_interval_ms_per_node")
    figure = row["overhead_ms_per_node"]
    return f"{figure} ({interval[0]:g} .. {interval[1]:g})" if interval else f"{figure}"


def _met(met: bool | str) -> str:
    return "undecided" if met == "undecided" else "yes" if met else "**no**"


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs > 0 else None


# Issue 13's targets (time against the proxy's bare latency, not our own requests' time).
IN_PROCESS_MS_PER_NODE = 5.0
IN_PROCESS_REQUESTS_PER_NODE = 0.3
STEP_SLACK_MS = 30.0
MAX_RATIO = 0.1


def check_targets(
    rows: list[dict], wide: dict, imports: dict, latency_ms: float, contender: str
) -> list[dict]:
    """The targets of issue 13 for ``contender``, each with the figure that decides it."""

    def row(mode: str) -> dict:
        return next(r for r in rows if r["mode"] == mode and r["contender"] == contender)

    targets = []

    def target(name: str, figure: Any, limit: Any, met: bool | str) -> None:
        targets.append({"target": name, "figure": figure, "limit": limit, "met": met})

    def timed(r: dict, limit: float) -> bool | str:
        """Judged by the 95 % confidence interval of the median of its pairs."""
        return verdict(r["overhead_interval_ms_per_node"], limit)

    inproc, pernode = row("in-process"), row("per-node")
    # A round trip is the proxy's bare latency: the server's own time is not ours to spend.
    target(
        f"in-process overhead per node (ms) <= {IN_PROCESS_MS_PER_NODE:.0f}",
        inproc["overhead_ms_per_node"],
        IN_PROCESS_MS_PER_NODE,
        timed(inproc, IN_PROCESS_MS_PER_NODE),
    )
    step_limit = round(latency_ms + STEP_SLACK_MS, 1)
    target(
        f"per-node extra wall of a one-node step (ms) <= one round trip (bare proxy latency) "
        f"+ {STEP_SLACK_MS:.0f} ms",
        pernode["overhead_ms_per_node"],
        step_limit,
        timed(pernode, step_limit),
    )
    target(
        f"in-process requests per node <= {IN_PROCESS_REQUESTS_PER_NODE}",
        inproc["requests_per_node"],
        IN_PROCESS_REQUESTS_PER_NODE,
        inproc["requests_per_node"] <= IN_PROCESS_REQUESTS_PER_NODE,
    )
    # 2 per step, 4 on the one step of the sample that may finish the pipeline (the last).
    sample_size = max(1, pernode["distinct_steps"])
    steps_limit = round(2 + 2 / sample_size, 2)
    per_step = pernode["requests_per_node"] * pernode["nodes_per_process"]
    target(
        f"per-node requests per step, mean of the sample <= 2 (4 on the step that may finish "
        f"the pipeline: {steps_limit} over {sample_size} steps)",
        per_step,
        steps_limit,
        per_step <= steps_limit,
    )
    for r in (inproc, pernode):
        ratio = r.get("ratio_overhead_vs_kedro_mlflow")
        target(
            f"{r['mode']} overhead ratio vs kedro-mlflow <= {MAX_RATIO}",
            ratio,
            MAX_RATIO,
            ratio is not None and ratio <= MAX_RATIO,
        )
    if contender in wide:
        target(
            "1000 params on one node: write requests <= 10 (all requests of the run in brackets)",
            f"{wide[contender]['write_requests']} ({wide[contender]['requests']})",
            10,
            wide[contender]["write_requests"] <= 10,
        )
    for label, check in imports.items():
        if isinstance(check, dict):
            target(
                f"{label}: no mlflow / google-auth imported",
                f"mlflow={check['mlflow']}, google.auth={check['google_auth']}",
                "both False",
                not check["mlflow"] and not check["google_auth"],
            )
    return targets


# -- report ---------------------------------------------------------------------------------
def _step_imports_text(result: dict) -> str:
    found = result.get("step_imports_mlflow", {})
    return ", ".join(f"{c} {'imports' if v else 'does not'}" for c, v in found.items()) or "-"


def markdown(result: dict) -> str:
    cfg = result["config"]
    imports_text = ", ".join(f"{c} {s} s" for c, s in result["client_import_s"].items())
    lines = [
        f"# Benchmark: {cfg['nodes']}-node pipeline, 20 nested params per node",
        "",
        f"**mlflow.yml: `{cfg['mlflow_yml']}`** (both tracking contenders read it): "
        + MLFLOW_YML_WORDS[cfg["mlflow_yml"]],
        "",
        f"`{cfg['command']}` on {result['machine']['when']} "
        f"({result['machine']['cpus']} CPUs, load {result['machine']['load_before']}; "
        f"kedro_vertex_hooks at {result['machine']['kedro_vertex_hooks']}); "
        f"proxy latency {cfg['latency_ms']} ms per request "
        f"(measured get_run: {result['calibration']['get_run_proxy_ms']} ms through the proxy, "
        f"{result['calibration']['get_run_direct_ms']} ms straight to the server).",
        "",
        f"Modes: **in-process** = one `kedro run` of all {cfg['nodes']} nodes "
        f"({cfg['repeats']} repeats; {cfg.get('pairs', cfg['repeats'])} for none and ours); "
        "**per-node** = one `kedro run --nodes X` process per node "
        f"with `MLFLOW_RUN_ID`, on a sample of {cfg['sample']} nodes spread over the pipeline "
        f"({cfg['node_repeats']} repeats; {cfg.get('node_pairs', cfg['node_repeats'])} for none "
        "and ours). Wall = one in-process run, or the sum of the sampled "
        "steps. Overhead = extra wall time vs the no-tracking process run next to it, per node "
        "(median of pairs, then the 95 % confidence interval of that median, which decides "
        "its target); 'excl. import' also subtracts the contender's import of the MLflow "
        f"client ({imports_text}; 0 when its one-node step does not import MLflow: "
        f"{_step_imports_text(result)}), spread over the nodes of one process; "
        "CPU = extra user+system "
        "time (less sensitive to machine load than wall time); request time = median time one "
        "request took through the proxy in those runs (latency + server time).",
        "",
        "| mode | contender | wall min (s) | wall median (s) | overhead / node (ms) "
        "| excl. client import (ms) | CPU / node (ms) | requests / node | request time (ms) "
        "| bytes / node "
        "| ours / kedro-mlflow: overhead | excl. import | requests | bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['contender']} | {r['wall_min_s']} | {r['wall_median_s']} "
            f"| {_with_interval(r)} | {r['overhead_ms_per_node_excl_client_import']} "
            f"| {r['cpu_overhead_ms_per_node']} | {r['requests_per_node']} "
            f"| {_fmt(r['request_ms_median'])} | {r['bytes_per_node']} "
            f"| {_fmt(r.get('ratio_overhead_vs_kedro_mlflow'))} "
            f"| {_fmt(r.get('ratio_overhead_excl_import_vs_kedro_mlflow'))} "
            f"| {_fmt(r.get('ratio_requests_vs_kedro_mlflow'))} "
            f"| {_fmt(r.get('ratio_bytes_vs_kedro_mlflow'))} |"
        )
    if result["wide"]:
        lines += [
            "",
            "| one node with 1000 params (in-process) | write requests | all requests "
            "| params logged |",
            "|---|---:|---:|---:|",
        ]
    for contender, figures in result["wide"].items():
        lines.append(
            f"| {contender} | {figures['write_requests']} | {figures['requests']} "
            f"| {figures['params_logged']} |"
        )
    lines += [
        "",
        "| import check (ours' environment) | mlflow imported | google.auth imported | seconds |",
        "|---|---|---|---:|",
    ]
    for label, check in result["imports"].items():
        if isinstance(check, dict):
            seconds = round(check["seconds"], 3) if "seconds" in check else "-"
            lines.append(f"| `{label}` | {check['mlflow']} | {check['google_auth']} | {seconds} |")
    lines += [
        "",
        "Params logged per run (same work for every tracking contender): "
        + "; ".join(f"{k}: {v}" for k, v in result["params_logged"].items()),
        "",
    ]
    for contender, targets in result["targets"].items():
        lines += [
            f"Targets for `{contender}` (time against the proxy's bare latency):",
            "",
            "| target | figure | limit | met |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {t['target']} | {t['figure']} | {t['limit']} | {_met(t['met'])} |" for t in targets
        ]
        lines.append("")
    lines += ["Contenders (same generated project, different `settings.py` / environment):", ""]
    lines += [
        f"- `{c['name']}`: {c['label']}; environment: {c['environment']}"
        for c in result["contenders"]
    ]
    lines += ["", "Requests per node by endpoint:", ""]
    for r in result["rows"]:
        if r["contender"] != BASELINE:
            parts = ", ".join(f"{k} {v}" for k, v in r["requests_per_node_by_endpoint"].items())
            lines.append(f"- {r['mode']} {r['contender']}: {parts}")
    return "\n".join(lines) + "\n"


def _describe_environment(contender: str, installed: list[str]) -> str:
    mlflow = (
        "full mlflow"
        if "mlflow" in installed
        else ("mlflow-skinny" if "mlflow-skinny" in installed else "no mlflow")
    )
    return (
        f"`pip install {' '.join(ENV_REQUIREMENTS[contender])}` equivalent "
        f"({len(installed)} distributions, {mlflow})"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Tracking overhead: ours vs kedro-mlflow.")
    parser.add_argument("--repeats", type=int, default=3, help="in-process runs per contender")
    parser.add_argument("--node-repeats", type=int, default=2, help="per-node sample repeats")
    parser.add_argument(
        "--pairs", type=int, default=12, help="in-process runs of none and ours (>= --repeats)"
    )
    parser.add_argument(
        "--node-pairs", type=int, default=4, help="per-node sample repeats of none and ours"
    )
    parser.add_argument("--sample", type=int, default=8, help="nodes run one per process")
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument(
        "--contenders",
        default="none,kedro_mlflow,ours",
        help=f"comma-separated, from {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--mlflow-yml",
        choices=sorted(MLFLOW_YML_PARAMS),
        default="init",
        help="the mlflow.yml both tracking contenders read: 'init' as `kedro mlflow init` "
        "writes it (the headline), 'flat' with dict_params.flatten: true",
    )
    parser.add_argument("--skip-wide", action="store_true", help="skip the 1000-param node")
    parser.add_argument("--workdir", default=str(BENCHMARK_DIR / "results" / "work"))
    parser.add_argument(
        "--latest-md", default=None, help="default: LATEST.md (init) or LATEST-flat.md"
    )
    parser.add_argument(
        "--report-only", metavar="JSON", help="only redo the tables from a results JSON file"
    )
    args = parser.parse_args()
    if args.report_only:
        result = json.loads(Path(args.report_only).read_text())
        report(result, latest_md_path(args.latest_md, result["config"]["mlflow_yml"]))
        return
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if BASELINE not in args.contenders or OURS not in args.contenders:
        parser.error(f"--contenders must include {BASELINE} and {OURS}")
    if args.sample < 2:
        parser.error("--sample must be at least 2")

    command = "python benchmark/run.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    revision = package_revision()
    bench = Bench(args)
    started = time.perf_counter()
    try:
        bench.setup()
        calibration = bench.calibrate()
        bench.warm_up()
        print("In-process runs...")
        params_logged = {f"in-process {c}": v for c, v in bench.in_process().items()}
        print("Per-node runs...")
        params_logged |= {f"per-node {c}": v for c, v in bench.per_node().items()}
        # With the init file both contenders refuse the 1000-param dict as one too-long param
        # (long_params_strategy: fail): the wide run only says something when flattened.
        wide = {} if args.skip_wide or args.mlflow_yml == "init" else bench.wide()
        imports = bench.imports()
        step_imports = bench.step_imports_mlflow()
        client_import = bench.client_import_s(step_imports)
    finally:
        bench.close()

    result = {
        "config": {
            "command": command.strip(),
            "nodes": NODES,
            "repeats": args.repeats,
            "pairs": max(args.repeats, args.pairs),
            "node_repeats": args.node_repeats,
            "node_pairs": max(args.node_repeats, args.node_pairs),
            "sample": args.sample,
            "latency_ms": args.latency_ms,
            "contenders": args.contenders,
            "mlflow_yml": args.mlflow_yml,
        },
        "machine": {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "load_before": round(load_before, 1),
            "python": platform.python_version(),
            "kedro_vertex_hooks": revision,
            "versions": {d: metadata.version(d) for d in ("kedro", "mlflow", "kedro-mlflow")},
            "seconds": round(time.perf_counter() - started),
        },
        "contenders": [
            {
                "name": c,
                "label": CONTENDERS[c].label,
                "environment": _describe_environment(c, bench.installed.get(c, [])),
                "installed": bench.installed.get(c, []),
                "settings_py": CONTENDERS[c].settings,
            }
            for c in args.contenders
        ],
        "calibration": calibration,
        "wide": wide,
        "imports": imports,
        "client_import_s": client_import,
        "step_imports_mlflow": step_imports,
        "params_logged": params_logged,
        "samples": [asdict(s) for s in bench.samples],
    }
    report(result, latest_md_path(args.latest_md, args.mlflow_yml))


def latest_md_path(given: str | None, mlflow_yml: str) -> Path:
    if given:
        return Path(given)
    return BENCHMARK_DIR / ("LATEST.md" if mlflow_yml == "init" else f"LATEST-{mlflow_yml}.md")


def report(result: dict, latest_md: Path) -> None:
    """Compute rows and targets from the samples; write the JSON and the markdown."""
    samples = [Sample(**s) for s in result["samples"]]
    contenders = result["config"]["contenders"]
    rows = summarise(samples, contenders, result["client_import_s"])
    result["rows"] = rows
    result["targets"] = {
        c: check_targets(rows, result["wide"], result["imports"], result["config"]["latency_ms"], c)
        for c in contenders
        if c.startswith(OURS)
    }
    json_path = BENCHMARK_DIR / "results" / f"{result['config']['mlflow_yml']}.json"
    json_path.parent.mkdir(exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    latest_md.write_text(text)
    print()
    print(text)
    print(f"Took {result['machine']['seconds']} s. JSON (commit it with the table): {json_path}")


if __name__ == "__main__":
    main()
