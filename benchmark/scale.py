"""Scale benchmark: what one node step costs as the shared run grows to 50, 300, 1000 nodes.

    python benchmark/scale.py                 # N = 50, 300, 1000: 10-12 minutes on 2 cores
    python benchmark/scale.py --sizes 50      # or --quick: N = 50, 2 repeats

For each N, on a fresh ``mlflow server`` (sqlite, or PostgreSQL with ``--backend postgres``;
``--workers 1``) behind the loopback proxy of
``tests/support/proxy.py`` (25 ms per request, counts requests and bytes per process):

1. generates the project of ``benchmark/generate_project.py`` in the ``fan_out(N)`` layout
   (``prepare`` -> N-2 parallel nodes -> ``join``, 5 scalar params per node, flattened by
   ``mlflow.yml``: 5*N params in the run), once with ``MlflowRunHooks()`` (``ours``), once
   without tracking (``none``), both on one data folder, each in an environment built as
   ``benchmark/run.py`` builds them (ours: ``pip install "kedro-vertex-hooks[mlflow-skinny]"``,
   no kedro-mlflow; none: the same image without this package, ``pip install kedro
   mlflow-skinny``);
2. runs the whole pipeline untracked once, so that every dataset exists;
3. per repeat: creates a run and fills it the way real steps do, with one tracked
   ``kedro run --nodes <all but one parallel node M and join>`` of the default pipeline with
   ``MLFLOW_RUN_ID``; then, as separate processes, ``kedro run --nodes M`` (a step that
   cannot finish the pipeline) and ``kedro run --nodes join`` (the one that finishes it),
   each next to the same step untracked (the middle step ``--mid-pairs`` times: re-running
   it writes the same record again; the last step ``--last-pairs`` times, the run's status
   set back to RUNNING straight on the server before each pair after the first, so that
   every last step finds the run as the first did); then ``kedro vertex-hooks finalize`` on
   that run
   and on a fresh empty run (the command's start-up);
4. on the last run: ``runs/get`` (size, time; bookkeeping = its JSON without
   ``data.params``), then copies of it until the experiment holds 20 such runs, and
   ``runs/search`` (max_results 20) through the proxy.

Everything is measured from the outside (the proxy, the REST JSON, the child's wall and CPU
time), never from knowledge of what the package writes. Results: markdown tables on stdout
and in ``benchmark/LATEST-scale.md``, every raw figure in ``benchmark/results/scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO = BENCHMARK_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARK_DIR))

from generate_project import EXPERIMENT, fan_out, generate_project, node_names  # noqa: E402

from benchmark.paired import interval_ms, verdict  # noqa: E402
from benchmark.run import (  # noqa: E402
    STEP_SLACK_MS,
    base_environment,
    make_environment,
    package_revision,
    run_measured,
)
from tests.support.mlflow_server import MlflowServer  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.proxy import MlflowProxy, TrafficStats  # noqa: E402

DEFAULT_SIZES = (50, 300, 1000)
PARAMS_PER_NODE = 5
SEARCH_RUNS = 20
# What each project's environment holds (as `pip install` would give): ours is the client-only
# image, `pip install "kedro-vertex-hooks[mlflow-skinny]"`: its steps talk REST without
# importing MLflow, its finalize needs MLflow's client. The untracked step runs in the same
# image without this package: MLflow's client stays, and with it pydantic, which Kedro imports
# in every step when it is installed (kedro.validation); that cost is the image's, not ours.
ENV_REQUIREMENTS = {
    "none": ("kedro", "mlflow-skinny"),
    "ours": ("kedro", "kedro-vertex-hooks", "mlflow-skinny"),
}
JSON_PATH = BENCHMARK_DIR / "results" / "scale.json"
LATEST_MD = BENCHMARK_DIR / "LATEST-scale.md"
BACKEND_WORDS = {
    "sqlite": "the MLflow server on sqlite",
    "postgres": "the MLflow server on PostgreSQL 15 (production's store; a fresh cluster per N, "
    "fsync off)",
}
RUNS_GET = "/api/2.0/mlflow/runs/get"
RUNS_SEARCH = "/api/2.0/mlflow/runs/search"
LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
# MLflow's log_batch limits
BATCH_PARAMS = 100
BATCH_TAGS = 100
BATCH_TOTAL = 1000

# The targets. "at" None: every N; a number: that N only.
KB = 1024
MID_READ_LIMIT = 64 * KB
LAST_READ_SLACK = 64 * KB
FINALIZE_LIMITS_S = {1000: 3.0, 300: 2.0}
BOOKKEEPING_LIMIT = 100  # bytes per node
SEARCH_LIMIT_MB = 8.0
STEP_REQUESTS = {"mid": 2, "last": 4}
STEP_CPU_LIMIT_MS = 30.0
TARGET_N = 1000
STEP_KINDS = ("mid", "last")
STEP_WORDS = {
    "mid": "mid (`--nodes M`, cannot finish)",
    "last": "last (`--nodes join`, finishes)",
}


@dataclass
class Process:
    """One ``kedro`` process: its wall and CPU time and what the proxy saw of it."""

    nodes: int  # N of the project
    kind: str  # untracked-full, fill, mid, last, finalize, finalize-empty
    tracked: bool
    repeat: int
    wall_s: float
    cpu_s: float  # user + system time of the child (RUSAGE_CHILDREN delta)
    requests: int
    bytes_read: int  # response bytes the process received through the proxy
    bytes_written: int  # request bytes it sent
    by_endpoint: dict[str, int] = field(default_factory=dict)
    # (ms since its first request, endpoint, status, response bytes, ms until answered, the
    # proxy's latency included)
    sequence: list[tuple[float, str, int | None, int, float]] = field(default_factory=list)
    pair: int = 0  # which tracked / untracked pair of its step within the repeat


# -- pure helpers (tested in tests/test_scale_report.py) -------------------------------------
def run_json_figures(body: dict) -> dict[str, int]:
    """Counts and sizes from a ``runs/get`` answer: the user's params as JSON, and the rest
    of the run (``data.params`` removed: info, tags, latest metrics, inputs) = bookkeeping.
    Both re-serialised compactly, so that they do not depend on the server's formatting."""
    run = body["run"]
    data = run.get("data", {})
    params = data.get("params", [])
    rest = {**run, "data": {k: v for k, v in data.items() if k != "params"}}
    return {
        "params": len(params),
        "tags": len(data.get("tags", [])),
        "metrics": len(data.get("metrics", [])),
        "params_bytes": len(_compact(params)),
        "bookkeeping_bytes": len(_compact({"run": rest})),
    }


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def batches(
    params: Sequence[Any], tags: Sequence[Any], metrics: Sequence[Any]
) -> Iterator[tuple[list, list, list]]:
    """``log_batch`` chunks within MLflow's limits: <= 100 params, <= 100 tags, <= 1000
    entities in all (metrics fill what params and tags leave)."""
    p = t = m = 0
    while p < len(params) or t < len(tags) or m < len(metrics):
        chunk_params = list(params[p : p + BATCH_PARAMS])
        chunk_tags = list(tags[t : t + BATCH_TAGS])
        room = BATCH_TOTAL - len(chunk_params) - len(chunk_tags)
        chunk_metrics = list(metrics[m : m + room])
        p, t, m = p + len(chunk_params), t + len(chunk_tags), m + len(chunk_metrics)
        yield chunk_params, chunk_tags, chunk_metrics


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _pair_of(process: dict) -> tuple[int, int]:
    return process["repeat"], process.get("pair", 0)


def _paired(tracked: list[dict], untracked: list[dict], key: str) -> list[float]:
    """tracked - untracked, per pair (of a repeat) that has both."""
    base = {_pair_of(p): p[key] for p in untracked}
    return [p[key] - base[_pair_of(p)] for p in tracked if _pair_of(p) in base]


def summarise_size(size: dict) -> dict:
    """One row of figures for one N from its raw processes and measurements.

    Requests and bytes: the largest over repeats (they hardly vary); times: medians; extra
    wall / CPU: median over the pairs of (tracked - untracked) for the same step, and the 95 %
    confidence interval of that median; finalize
    beyond start-up: median of (finalize of the filled run - finalize of an empty run).
    """
    processes = size["processes"]
    bare_ms = _median(size["calibration"]["health_proxy_ms"])

    def of(kind: str, tracked: bool) -> list[dict]:
        return [p for p in processes if p["kind"] == kind and p["tracked"] == tracked]

    steps = {}
    for kind in STEP_KINDS:
        tracked, untracked = of(kind, True), of(kind, False)
        extra_wall = _paired(tracked, untracked, "wall_s")
        extra_cpu = _paired(tracked, untracked, "cpu_s")
        steps[kind] = {
            "requests": max((p["requests"] for p in tracked), default=None),
            "bytes_read": max((p["bytes_read"] for p in tracked), default=None),
            "bytes_written": max((p["bytes_written"] for p in tracked), default=None),
            "wall_s": _round(_median([p["wall_s"] for p in tracked]), 3),
            "untracked_wall_s": _round(_median([p["wall_s"] for p in untracked]), 3),
            "extra_wall_ms": _round(_ms(_median(extra_wall))),
            "extra_cpu_ms": _round(_ms(_median(extra_cpu))),
            "log_batch_server_ms": _round(
                _median([m for p in tracked if (m := log_batch_server_ms(p, bare_ms)) is not None])
            ),
            "extra_wall_interval_ms": _interval_ms(extra_wall),
            "extra_cpu_interval_ms": _interval_ms(extra_cpu),
            "pairs": len(extra_wall),
        }
    full, empty = of("finalize", True), of("finalize-empty", True)
    finalize = {
        "wall_s": _round(_median([p["wall_s"] for p in full]), 3),
        "startup_wall_s": _round(_median([p["wall_s"] for p in empty]), 3),
        "beyond_startup_s": _round(_median(_paired(full, empty, "wall_s")), 3),
        "requests": max((p["requests"] for p in full), default=None),
        "bytes_read": max((p["bytes_read"] for p in full), default=None),
        "bytes_written": max((p["bytes_written"] for p in full), default=None),
    }
    fill = of("fill", True)
    run = size["run"]
    search = size["search"]
    return {
        "nodes": size["nodes"],
        "bare_latency_ms": _round(_median(size["calibration"]["health_proxy_ms"])),
        "steps": steps,
        "finalize": finalize,
        "fill": {
            "wall_s": _round(_median([p["wall_s"] for p in fill]), 2),
            "requests": max((p["requests"] for p in fill), default=None),
        },
        "run": {
            "params": run["params"],
            "tags": run["tags"],
            "metrics": run["metrics"],
            "metric_points": size["copies"].get("metric_points"),
            "runs_get_bytes": run["runs_get_bytes"],
            "runs_get_proxy_ms": _round(_median(run["runs_get_proxy_ms"])),
            "runs_get_direct_ms": _round(_median(run["runs_get_direct_ms"])),
            "params_bytes": run["params_bytes"],
            "bookkeeping_bytes": run["bookkeeping_bytes"],
            "bookkeeping_per_node": round(run["bookkeeping_bytes"] / size["nodes"], 1),
        },
        "search": {
            "runs": search["runs_returned"],
            "mb": round(max(search["response_bytes"]) / 1e6, 2),
            "seconds": _round(_median(search["seconds"]), 2),
            "params_only_mb": _mb(search.get("params_only_response_bytes")),
        },
        "log_batch_direct": {
            key: _round(_median(laps)) for key, laps in size.get("log_batch_direct", {}).items()
        },
    }


def log_batch_server_ms(process: dict, bare_ms: float | None) -> float | None:
    """The time a step's log-batch requests took beyond a bare round trip: the server's work
    on them (MLflow's SQL store reads every param of the run to log a param), which no client
    can shorten. None when the figures predate per-request times."""
    writes = [e for e in process["sequence"] if e[1].endswith(LOG_BATCH) and len(e) >= 5]
    if bare_ms is None or not writes:
        return None
    return sum(max(0.0, entry[4] - bare_ms) for entry in writes)


def _interval_ms(seconds: Sequence[float]) -> list[float] | None:
    """The 95 % confidence interval of the median of paired differences, in ms."""
    return interval_ms(seconds) if seconds else None


def _mb(sizes: list[int] | None) -> float | None:
    return round(max(sizes) / 1e6, 2) if sizes else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets: one entry per (target, N) with the figure that decides it.

    ``met`` is None when the figure is missing (that N was not run). A time figure is the
    median of paired differences, judged by its confidence interval (``paired.verdict``):
    met when the interval is within the limit, failed when it is all over it, and
    ``"undecided"`` when it straddles it: the machine's noise (tens of ms on a step, hundreds
    on steps of seconds) is then larger than the distance to the limit."""
    targets: list[dict] = []
    by_n = {r["nodes"]: r for r in rows}

    def target(
        name: str, n: int, figure: Any, limit: Any, spread: list[float] | None = None
    ) -> None:
        met: bool | str | None = None
        if figure is not None and limit is not None:
            met = figure <= limit if spread is None else verdict(spread, limit)
        targets.append(
            {"target": name, "nodes": n, "figure": figure, "limit": limit, "met": met,
             "spread": spread}
        )  # fmt: skip

    for row in rows:
        n = row["nodes"]
        round_trip = row["bare_latency_ms"]
        for kind in STEP_KINDS:
            step = row["steps"][kind]
            target(
                f"{kind} step: requests <= {STEP_REQUESTS[kind]}",
                n,
                step["requests"],
                STEP_REQUESTS[kind],
            )
            target(
                f"{kind} step: extra wall (ms) <= one bare proxy round trip "
                f"+ {STEP_SLACK_MS:.0f} ms",
                n,
                step["extra_wall_ms"],
                None if round_trip is None else round(round_trip + STEP_SLACK_MS, 1),
                step.get("extra_wall_interval_ms"),
            )
            target(
                f"{kind} step: extra CPU (ms) <= {STEP_CPU_LIMIT_MS:.0f}",
                n,
                step["extra_cpu_ms"],
                STEP_CPU_LIMIT_MS,
                step.get("extra_cpu_interval_ms"),
            )
    big = by_n.get(TARGET_N)
    target(
        "mid step: bytes read <= 64 KB",
        TARGET_N,
        big["steps"]["mid"]["bytes_read"] if big else None,
        MID_READ_LIMIT,
    )
    target(
        "last step: bytes read <= the user's params (JSON) + 64 KB",
        TARGET_N,
        big["steps"]["last"]["bytes_read"] if big else None,
        big["run"]["params_bytes"] + LAST_READ_SLACK if big else None,
    )
    for n, limit in sorted(FINALIZE_LIMITS_S.items(), reverse=True):
        row = by_n.get(n)
        target(
            f"finalize beyond start-up (s) <= {limit:g}",
            n,
            row["finalize"]["beyond_startup_s"] if row else None,
            limit,
        )
    target(
        f"bookkeeping (runs/get without data.params, bytes per node) <= {BOOKKEEPING_LIMIT}",
        TARGET_N,
        big["run"]["bookkeeping_per_node"] if big else None,
        BOOKKEEPING_LIMIT,
    )
    target(
        f"runs/search of {SEARCH_RUNS} runs (MB) <= {SEARCH_LIMIT_MB:g}",
        TARGET_N,
        big["search"]["mb"] if big else None,
        SEARCH_LIMIT_MB,
    )
    return targets


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value}"


def _spread(median: float | None, spread: list[float] | None) -> str:
    return _fmt(median) if spread is None else f"{_fmt(median)} ({spread[0]:g} .. {spread[1]:g})"


def _kb(value: int | None) -> str:
    return "-" if value is None else f"{value / KB:.1f}"


def _met(target: dict) -> str:
    if target["met"] == "undecided":
        low, high = target["spread"]
        return f"undecided: 95 % CI {low:g} .. {high:g}"
    return {True: "pass", False: "**FAIL**", None: "not run"}[target["met"]]


def markdown(result: dict) -> str:
    """The tables of LATEST-scale.md from a results dict (rows and targets included)."""
    cfg, machine = result["config"], result["machine"]
    rows, targets = result["rows"], result["targets"]
    latencies = ", ".join(f"N={r['nodes']}: {r['bare_latency_ms']} ms" for r in rows)
    lines = [
        f"# Scale benchmark: prepare -> N-2 parallel nodes -> join, "
        f"{cfg['params_per_node']} params per node",
        "",
        f"`{cfg['command']}` on {machine['when']} ({machine['cpus']} CPUs, load "
        f"{machine['load_before']}; kedro_vertex_hooks at {machine['kedro_vertex_hooks']}); "
        f"took {machine['seconds']} s; {BACKEND_WORDS[cfg.get('backend', 'sqlite')]}. "
        f"Proxy latency {cfg['latency_ms']} ms per request; "
        f"bare round trip measured (GET /health through the proxy, median): {latencies}. "
        f"{cfg['repeats']} repeats per N: each a fresh run filled by one tracked in-process "
        "`kedro run --nodes <all but M and join>`, then the two steps below as separate "
        "processes with `MLFLOW_RUN_ID`, each next to the same step untracked "
        f"({cfg.get('mid_pairs', 1)} pair(s) of the middle step per repeat, "
        f"{cfg.get('last_pairs', 1)} of the last, the run set back to RUNNING before each "
        "after the first).",
        "",
        "Steps (requests and bytes through the proxy, largest over repeats; extra = median "
        "over the pairs of tracked - untracked for the same step, then the 95 % confidence "
        "interval of that median):",
        "",
        "| N | step | requests | read (KB) | written (KB) | wall (s) | untracked wall (s) "
        "| extra wall (ms) | extra CPU (ms) | log-batch beyond a bare round trip (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for kind in STEP_KINDS:
            s = r["steps"][kind]
            lines.append(
                f"| {r['nodes']} | {STEP_WORDS[kind]} | {_fmt(s['requests'])} "
                f"| {_kb(s['bytes_read'])} | {_kb(s['bytes_written'])} | {_fmt(s['wall_s'])} "
                f"| {_fmt(s['untracked_wall_s'])} "
                f"| {_spread(s['extra_wall_ms'], s.get('extra_wall_interval_ms'))} "
                f"| {_spread(s['extra_cpu_ms'], s.get('extra_cpu_interval_ms'))} "
                f"| {_fmt(s.get('log_batch_server_ms'))} |"
            )
    lines += [
        "",
        "The run (the last repeat's, after its steps and finalize) and the commands that read "
        "it whole:",
        "",
        "| N | params | tags | metrics | metric points | runs/get (KB) | runs/get via proxy (ms) "
        "| runs/get direct (ms) | user params JSON (KB) | bookkeeping (B / node) "
        "| finalize beyond start-up (s) | finalize start-up (s) | finalize requests "
        "| finalize read (KB) | runs/search 20 runs (MB) | runs/search (s) "
        "| runs/search, params alone (MB) | a step's log-batch direct: 5 params / none (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        run, fin, search = r["run"], r["finalize"], r["search"]
        writes = r.get("log_batch_direct", {})
        lines.append(
            f"| {r['nodes']} | {run['params']} | {run['tags']} | {run['metrics']} "
            f"| {_fmt(run['metric_points'])} | {_kb(run['runs_get_bytes'])} "
            f"| {_fmt(run['runs_get_proxy_ms'])} "
            f"| {_fmt(run['runs_get_direct_ms'])} | {_kb(run['params_bytes'])} "
            f"| {run['bookkeeping_per_node']} | {_fmt(fin['beyond_startup_s'])} "
            f"| {_fmt(fin['startup_wall_s'])} | {_fmt(fin['requests'])} "
            f"| {_kb(fin['bytes_read'])} | {search['mb']} | {_fmt(search['seconds'])} "
            f"| {_fmt(search.get('params_only_mb'))} "
            f"| {_fmt(writes.get('with_params_ms'))} / {_fmt(writes.get('without_params_ms'))} |"
        )
    lines += [
        "",
        "Targets:",
        "",
        "| target | N | figure | limit | result |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {t['target']} | {t['nodes']} | {_fmt(t['figure'])} | {_fmt(t['limit'])} | {_met(t)} |"
        for t in targets
    ]
    lines += [
        "",
        "Columns: read / written = response / request bytes of the step process through the "
        "proxy (headers included); extra CPU = user+system time of the child over the "
        "untracked step's; log-batch beyond a bare round trip = the time the step's log-batch "
        "requests took through the proxy minus GET /health's (median over the tracked steps): "
        "the server's own work, which grows with the run's params (MLflow's SQL store loads "
        "every param of the run to log one); metrics = latest values in runs/get, metric "
        "points = every metric's full history (not in runs/get); runs/get via proxy = "
        "latency + server time, direct = server time (medians of 5); "
        "bookkeeping = compact JSON of runs/get without `data.params`, per node; finalize "
        "beyond start-up = `kedro vertex-hooks finalize` on the run minus on an empty run; "
        f"runs/search = one search (max_results {SEARCH_RUNS}) of an experiment holding "
        f"{SEARCH_RUNS} such runs (the repeats' runs and copies of the last one), wire bytes; "
        f"params alone = the same search of {SEARCH_RUNS} runs holding only the last run's "
        "params (what any tool's runs list of these pipelines weighs); a step's log-batch direct "
        "= the write of a middle step (5 new params and a metric), straight to the server into "
        "the run, median of 9, and the same write without params: the server's cost of a "
        "step's params grows with the run's.",
    ]
    return "\n".join(lines) + "\n"


def outputs(backend: str) -> tuple[Path, Path]:
    """Where a run's markdown and JSON go: sqlite's are the headline files."""
    if backend == "sqlite":
        return LATEST_MD, JSON_PATH
    return (
        BENCHMARK_DIR / f"LATEST-scale-{backend}.md",
        BENCHMARK_DIR / "results" / f"scale-{backend}.json",
    )


def report(result: dict, latest_md: Path = LATEST_MD, json_path: Path = JSON_PATH) -> str:
    """Rows and targets from the raw figures; write the JSON and the markdown; return it."""
    result["rows"] = [summarise_size(size) for size in result["sizes"]]
    result["targets"] = check_targets(result["rows"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    latest_md.write_text(text)
    return text


# -- the runner -------------------------------------------------------------------------------
class ScaleBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.env = base_environment()
        self.pythons: dict[str, Path] = {}
        self.installed: dict[str, list[str]] = {}
        self.server: MlflowServer | None = None
        self.proxy: MlflowProxy | None = None
        self.postgres: PostgresCluster | None = None
        self.projects: dict[str, Path] = {}
        self.log_count = 0

    def setup(self) -> None:
        """The two environments, as benchmark/run.py builds them."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        for contender in ("none", "ours"):
            self.pythons[contender], self.installed[contender] = make_environment(
                self.work, contender, ENV_REQUIREMENTS[contender]
            )
        subprocess.run(
            [str(self.pythons["ours"]), "-c", "import kedro_vertex_hooks.session"],
            env=self.env,
            check=True,
        )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def start_server(self, root: Path) -> MlflowServer:
        """A fresh ``mlflow server`` on sqlite, or on a fresh PostgreSQL cluster (production's
        store: ``--backend postgres``)."""
        backend_store_uri = None
        if self.args.backend == "postgres":
            self.postgres = PostgresCluster().start()
            backend_store_uri = self.postgres.sqlalchemy_uri
        return MlflowServer(root / "server", backend_store_uri=backend_store_uri).start()

    def kedro(
        self,
        contender: str,
        kind: str,
        nodes: int,
        args: list[str],
        repeat: int = 0,
        run_id: str | None = None,
        pair: int = 0,
    ) -> Process:
        env = dict(self.env)
        if run_id:
            env["MLFLOW_RUN_ID"] = run_id
        command = [str(self.pythons[contender]), "-m", "kedro", *args]
        self.log_count += 1
        log = self.logs / f"{self.log_count:04d}-n{nodes}-{contender}-{kind}.log"
        wall, cpu, stats = run_measured(
            command, self.projects[contender], env, log, self.proxy, f"n={nodes} {kind}"
        )
        process = _process(nodes, kind, contender != "none", repeat, wall, cpu, stats)
        process.pair = pair
        return process

    def client(self, direct: bool = True) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.server.uri if direct else self.proxy.uri)

    def calibrate(self) -> dict[str, list[float]]:
        """The proxy's bare round trip: GET /health (the server does next to nothing)."""
        import requests

        laps: dict[str, list[float]] = {}
        with requests.Session() as http:
            for name, uri in (("proxy", self.proxy.uri), ("direct", self.server.uri)):
                http.get(uri + "/health", timeout=30).raise_for_status()
                laps[f"health_{name}_ms"] = [
                    _timed_ms(lambda u=uri: http.get(u + "/health", timeout=30)) for _ in range(20)
                ]
        return laps

    def inspect_run(self, run_id: str, laps: int = 5) -> dict[str, Any]:
        """runs/get of the run: size, time through the proxy and straight to the server
        (laps interleaved, so that a busy moment of the machine hits both)."""
        import requests

        figures: dict[str, Any] = {"run_id": run_id}
        urls = {
            name: f"{uri}{RUNS_GET}?run_id={run_id}"
            for name, uri in (("proxy", self.proxy.uri), ("direct", self.server.uri))
        }
        with requests.Session() as http:
            answer = http.get(urls["direct"], timeout=120)
            answer.raise_for_status()
            body = answer.content
            for name in urls:
                figures[f"runs_get_{name}_ms"] = []
            for _ in range(laps):
                for name, url in urls.items():
                    figures[f"runs_get_{name}_ms"].append(
                        _timed_ms(lambda u=url: http.get(u, timeout=120))
                    )
        figures["runs_get_bytes"] = len(body)
        figures.update(run_json_figures(json.loads(body)))
        self.proxy.reset_stats()
        return figures

    def time_log_batches(self, run_id: str, laps: int = 9) -> dict[str, list[float]]:
        """A step's write straight to the server, into the filled run (after everything else
        was measured): with 5 new params, which MLflow's SQL store logs after loading every
        param of the run, and the same write without params, in turns."""
        import requests

        url = self.server.uri + "/api/2.0/mlflow/runs/log-batch"
        laps_ms: dict[str, list[float]] = {"with_params_ms": [], "without_params_ms": []}
        with requests.Session() as http:
            for lap in range(laps):
                metrics = [{"key": "benchmark.probe", "value": 1.0, "timestamp": 0, "step": lap}]
                params = [
                    {"key": f"probe_{lap}.p{i}", "value": "1"} for i in range(PARAMS_PER_NODE)
                ]
                for key, sent in (("with_params_ms", params), ("without_params_ms", [])):
                    body = {"run_id": run_id, "params": sent, "metrics": metrics, "tags": []}
                    laps_ms[key].append(
                        _timed_ms(lambda b=body: http.post(url, json=b, timeout=30))
                    )
        return laps_ms

    def search(self, experiment_id: str, laps: int = 3) -> dict[str, Any]:
        """runs/search (max_results 20) of the experiment through the proxy."""
        import requests

        found: dict[str, Any] = {"seconds": [], "response_bytes": [], "body_bytes": []}
        query = {"experiment_ids": [experiment_id], "max_results": SEARCH_RUNS}
        with requests.Session() as http:
            for _ in range(laps):
                self.proxy.reset_stats()
                started = time.perf_counter()
                answer = http.post(self.proxy.uri + RUNS_SEARCH, json=query, timeout=300)
                found["seconds"].append(time.perf_counter() - started)
                answer.raise_for_status()
                self.proxy.wait_idle()
                found["response_bytes"].append(self.proxy.reset_stats().bytes_to_client)
                found["body_bytes"].append(len(answer.content))
                found["runs_returned"] = len(answer.json().get("runs", []))
        return found

    def fill_experiment(
        self, run_id: str, experiment_id: str | None = None, params_only: bool = False
    ) -> dict[str, Any]:
        """Copies of the run (params, tags, every metric's full history) until the experiment
        (the run's own by default) holds SEARCH_RUNS active runs; straight to the server, not
        measured. ``params_only``: copies of the user's params alone, the size a runs list of
        these pipelines has whatever a tracking tool adds."""
        from mlflow.entities import Param, RunTag

        client = self.client()
        run = client.get_run(run_id)
        experiment_id = experiment_id or run.info.experiment_id
        active = len(client.search_runs([experiment_id], max_results=SEARCH_RUNS))
        history = [m for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
        params = [Param(k, v) for k, v in run.data.params.items()]
        tags = [RunTag(k, v) for k, v in run.data.tags.items() if k != "mlflow.runName"]
        if params_only:
            history, tags = [], []
        started = time.perf_counter()
        copies = max(0, SEARCH_RUNS - active)
        for _ in range(copies):
            new_id = client.create_run(
                experiment_id, start_time=run.info.start_time, run_name=run.info.run_name
            ).info.run_id
            for chunk_params, chunk_tags, chunk_metrics in batches(params, tags, history):
                client.log_batch(
                    new_id, metrics=chunk_metrics, params=chunk_params, tags=chunk_tags
                )
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's URL
                client.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
        return {
            "experiment_id": experiment_id,
            "copies": copies,
            "metric_keys": len(run.data.metrics),
            "metric_points": len(history),
            "copy_s": round(time.perf_counter() - started, 1),
        }

    def measure(self, nodes: int) -> dict[str, Any]:
        layout = fan_out(nodes, PARAMS_PER_NODE)
        names = node_names(layout)
        mid = names[len(names) // 2]  # a parallel node: join needs it, so it cannot finish
        fill = [name for name in names if name not in (mid, "join")]
        root = self.work / f"n{nodes}"
        print(f"N={nodes}: starting MLflow server and proxy ({self.args.latency_ms} ms)...")
        self.server = self.start_server(root)
        self.proxy = MlflowProxy(self.server.uri, latency_s=self.args.latency_ms / 1000).start()
        for contender in ("none", "ours"):
            self.projects[contender] = generate_project(
                root / f"project-{contender}",
                contender,
                self.proxy.uri,
                data_dir=root / "data",
                mlflow_yml="flat",  # flatten: each node's 5 params are 5 MLflow params
                layout=layout,
            )
        processes = [self.kedro("none", "untracked-full", nodes, ["run"])]
        print(f"  untracked full run: {processes[-1].wall_s:.1f} s")
        calibration = self.calibrate()
        client = self.client()
        experiment_id = client.create_experiment(EXPERIMENT)
        after_fill = []
        for repeat in range(self.args.repeats):
            run_id = client.create_run(experiment_id).info.run_id
            filled = self.kedro(
                "ours", "fill", nodes, ["run", "--nodes", ",".join(fill)], repeat, run_id
            )
            processes.append(filled)
            after_fill.append(self.inspect_run(run_id, laps=0))
            line = [f"  #{repeat + 1} fill {filled.wall_s:.1f} s ({filled.requests} requests)"]
            steps = (("mid", mid, self.args.mid_pairs), ("last", "join", self.args.last_pairs))
            for kind, node, pairs in steps:
                args = ["run", "--nodes", node]
                for pair in range(pairs):
                    if kind == "last" and pair:
                        client.update_run(run_id, status="RUNNING")  # as the first found it
                    # untracked first, then tracked first, in turns
                    order = [("none", None), ("ours", run_id)][:: -1 if (repeat + pair) % 2 else 1]
                    done = {c: self.kedro(c, kind, nodes, args, repeat, r, pair) for c, r in order}
                    bare, step = done["none"], done["ours"]
                    processes += [bare, step]
                line.append(
                    f"{kind} {step.wall_s:.2f} s vs {bare.wall_s:.2f} s, {step.requests} req, "
                    f"{step.bytes_read / KB:.0f} KB read"
                )
            final = ["vertex-hooks", "finalize", "--run-id"]
            processes.append(self.kedro("ours", "finalize", nodes, [*final, run_id], repeat))
            empty_id = client.create_run(experiment_id).info.run_id
            processes.append(
                self.kedro("ours", "finalize-empty", nodes, [*final, empty_id], repeat)
            )
            client.delete_run(empty_id)  # not one of the 20 runs searched below
            line.append(
                f"finalize {processes[-2].wall_s:.2f} s (empty run {processes[-1].wall_s:.2f} s)"
            )
            print("; ".join(line))
        run = self.inspect_run(run_id)
        copies = self.fill_experiment(run_id)
        search = self.search(experiment_id)
        params_only = client.create_experiment(f"{EXPERIMENT}-params-only")
        self.fill_experiment(run_id, params_only, params_only=True)
        search["params_only_response_bytes"] = self.search(params_only)["response_bytes"]
        print(
            f"  runs/get {run['runs_get_bytes'] / KB:.0f} KB; {copies['copies']} copies in "
            f"{copies['copy_s']} s; runs/search {max(search['response_bytes']) / 1e6:.2f} MB "
            f"(params alone {max(search['params_only_response_bytes']) / 1e6:.2f} MB)"
        )
        writes = self.time_log_batches(run_id)
        self.close()
        return {
            "nodes": nodes,
            "params_per_node": PARAMS_PER_NODE,
            "mid_node": mid,
            "calibration": calibration,
            "processes": [asdict(p) for p in processes],
            "after_fill": after_fill,
            "run": run,
            "copies": copies,
            "search": search,
            "log_batch_direct": writes,
        }


def _timed_ms(action: Any) -> float:
    started = time.perf_counter()
    action().raise_for_status()
    return round((time.perf_counter() - started) * 1000, 2)


def _process(
    nodes: int,
    kind: str,
    tracked: bool,
    repeat: int,
    wall: float,
    cpu: float,
    stats: TrafficStats,
) -> Process:
    first = stats.records[0].started if stats.records else 0.0
    return Process(
        nodes=nodes,
        kind=kind,
        tracked=tracked,
        repeat=repeat,
        wall_s=round(wall, 4),
        cpu_s=round(cpu, 4),
        requests=stats.requests,
        bytes_read=stats.bytes_to_client,
        bytes_written=stats.bytes_from_client,
        by_endpoint=stats.by_endpoint,
        sequence=[
            (
                round((r.started - first) * 1000, 1),
                r.endpoint,
                r.status,
                r.bytes_to_client,
                round(r.seconds * 1000, 1),
            )
            for r in stats.records
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated node counts (default: 50,300,1000)",
    )
    parser.add_argument("--quick", action="store_true", help="N = 50 only, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3, help="runs (fill + steps) per N")
    parser.add_argument(
        "--mid-pairs", type=int, default=4, help="middle-step pairs (tracked, untracked) per repeat"
    )
    parser.add_argument(
        "--last-pairs", type=int, default=2, help="last-step pairs (tracked, untracked) per repeat"
    )
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the MLflow server's store: sqlite, or PostgreSQL as in production "
        "(LATEST-scale-postgres.md, results/scale-postgres.json)",
    )
    parser.add_argument("--workdir", default=str(BENCHMARK_DIR / "results" / "scale-work"))
    parser.add_argument(
        "--report-only", metavar="JSON", help="only redo the tables from a results JSON file"
    )
    args = parser.parse_args()
    if args.report_only:
        result = json.loads(Path(args.report_only).read_text())
        print(report(result, *outputs(result["config"].get("backend", "sqlite"))))
        return
    sizes = [50] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if any(n < 3 for n in sizes) or args.repeats < 1 or args.repeats > SEARCH_RUNS:
        parser.error("sizes must be >= 3 and repeats between 1 and 20")
    if args.mid_pairs < 1 or args.last_pairs < 1:
        parser.error("--mid-pairs and --last-pairs must be >= 1")

    command = ("python benchmark/scale.py " + " ".join(sys.argv[1:])).strip()
    load_before = os.getloadavg()[0]
    revision = package_revision()
    bench = ScaleBench(args)
    started = time.perf_counter()
    measured = []
    try:
        print("Building the environments (as benchmark/run.py does)...")
        bench.setup()
        for nodes in sizes:
            measured.append(bench.measure(nodes))
    finally:
        bench.close()
    result = {
        "config": {
            "command": command,
            "sizes": sizes,
            "params_per_node": PARAMS_PER_NODE,
            "repeats": args.repeats,
            "mid_pairs": args.mid_pairs,
            "last_pairs": args.last_pairs,
            "backend": args.backend,
            "latency_ms": args.latency_ms,
        },
        "machine": {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "load_before": round(load_before, 1),
            "python": platform.python_version(),
            "kedro_vertex_hooks": revision,
            "versions": {d: metadata.version(d) for d in ("kedro", "mlflow")},
            "environments": bench.installed,
            "seconds": round(time.perf_counter() - started),
        },
        "sizes": measured,
    }
    print()
    latest_md, json_path = outputs(args.backend)
    print(report(result, latest_md, json_path))
    print(f"Took {result['machine']['seconds']} s. JSON (commit it with the table): {json_path}")


if __name__ == "__main__":
    main()
