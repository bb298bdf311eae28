"""The benchmark's report code on synthetic samples: figures, ratios and targets it derives.

Pure functions of benchmark/run.py (no server, no kedro run): what the committed tables say
must follow from the samples in the committed JSON.
"""

from __future__ import annotations

from benchmark.run import (
    Sample,
    check_targets,
    in_turn,
    markdown,
    next_to_baseline,
    summarise,
)

LATENCY_MS = 25.0
CONTENDERS = ["none", "kedro_mlflow", "ours"]


def sample(contender: str, mode: str, repeat: int, nodes: list[str], wall_s: float,
           cpu_s: float, requests: int) -> Sample:  # fmt: skip
    return Sample(
        contender=contender,
        mode=mode,
        repeat=repeat,
        nodes=nodes,
        wall_s=wall_s,
        cpu_s=cpu_s,
        requests=requests,
        bytes_total=100 * requests,
        connections=1,
        by_endpoint={"POST /api/2.0/mlflow/runs/log-batch": requests} if requests else {},
        request_ms_median=30.0 if requests else None,
    )


def synthetic() -> list[Sample]:
    """10-node in-process runs and two one-node steps, twice: kedro-mlflow adds 500 ms of wall
    per node in-process, ours 10 ms; per node 2000 ms against 120 ms."""
    samples = []
    pipeline = [f"n{i}" for i in range(10)]
    for repeat in (0, 1):
        for contender, extra_s, requests in (("none", 0, 0), ("kedro_mlflow", 5.0, 40),
                                             ("ours", 0.1, 3)):  # fmt: skip
            samples.append(
                sample(contender, "in-process", repeat, pipeline, 2.0 + extra_s, 1.0, requests)
            )
        for node in ("n0", "n9"):
            for contender, extra_s, requests in (("none", 0, 0), ("kedro_mlflow", 2.0, 6),
                                                 ("ours", 0.12, 2)):  # fmt: skip
                samples.append(
                    sample(contender, "per-node", repeat, [node], 3.0 + extra_s, 1.5, requests)
                )
    return samples


def test_rows_pair_each_run_with_its_baseline_and_divide_ours_by_kedro_mlflow():
    rows = summarise(synthetic(), CONTENDERS, {"kedro_mlflow": 0.8})
    by = {(r["mode"], r["contender"]): r for r in rows}

    assert by[("in-process", "ours")]["overhead_ms_per_node"] == 10.0
    assert by[("in-process", "kedro_mlflow")]["overhead_ms_per_node"] == 500.0
    assert by[("in-process", "ours")]["ratio_overhead_vs_kedro_mlflow"] == 0.02
    assert by[("per-node", "ours")]["overhead_ms_per_node"] == 120.0
    # kedro-mlflow's 0.8 s MLflow import is taken out of its per-step figure only
    assert by[("per-node", "kedro_mlflow")]["overhead_ms_per_node_excl_client_import"] == 1200.0
    assert by[("per-node", "ours")]["ratio_overhead_vs_kedro_mlflow"] == 0.06
    assert by[("per-node", "ours")]["requests_per_node"] == 2.0


def test_time_targets_are_judged_against_the_bare_latency_not_the_measured_request_time():
    rows = summarise(synthetic(), CONTENDERS, {})
    targets = {t["target"]: t for t in check_targets(rows, {}, {}, LATENCY_MS, "ours")}

    in_process = targets["in-process overhead per node (ms) <= 5"]
    assert (in_process["figure"], in_process["limit"], in_process["met"]) == (10.0, 5.0, False)
    per_node = next(t for name, t in targets.items() if name.startswith("per-node extra wall"))
    # 120 ms against one bare round trip + 30 ms (55 ms): missed, although requests measured
    # 30 ms each (the limit would be 60 ms then)
    assert (per_node["figure"], per_node["limit"], per_node["met"]) == (120.0, 55.0, False)
    assert not any("measured" in name for name in targets)
    steps = next(t for name, t in targets.items() if name.startswith("per-node requests"))
    # Two steps sampled (n0, n9): 2 requests each, within 2 + 2/2 (the last may use 4)
    assert (steps["figure"], steps["limit"], steps["met"]) == (2.0, 3.0, True)
    ratios = [t for name, t in targets.items() if "ratio" in name]
    assert [(t["figure"], t["limit"], t["met"]) for t in ratios] == [
        (0.02, 0.1, True),
        (0.06, 0.1, True),
    ]


def test_the_table_names_the_mlflow_yml_both_contenders_read():
    rows = summarise(synthetic(), CONTENDERS, {})
    result = {
        "config": {"command": "python benchmark/run.py", "nodes": 10, "repeats": 2,
                   "node_repeats": 2, "sample": 2, "latency_ms": LATENCY_MS,
                   "contenders": CONTENDERS, "mlflow_yml": "init"},
        "machine": {"when": "2026-12-02 19:00 UTC", "cpus": 2, "load_before": 0.5,
                    "kedro_vertex_hooks": "abc1234", "seconds": 1},
        "calibration": {"get_run_proxy_ms": 30.0, "get_run_direct_ms": 4.0},
        "client_import_s": {}, "wide": {}, "imports": {}, "params_logged": {},
        "contenders": [], "rows": rows,
        "targets": {"ours": check_targets(rows, {}, {}, LATENCY_MS, "ours")},
    }  # fmt: skip

    text = markdown(result)

    assert "**mlflow.yml: `init`**" in text and "kedro mlflow init" in text
    assert "| per-node | ours |" in text


def test_every_tracked_run_has_the_untracked_run_of_its_turn_right_next_to_it():
    contenders = ["none", "kedro_mlflow", "ours"]
    assert next_to_baseline(contenders, 0) == ["kedro_mlflow", "none", "ours"]
    assert next_to_baseline(contenders, 1) == ["ours", "none", "kedro_mlflow"]
    assert next_to_baseline(["none", "ours"], 0) == ["ours", "none"]
    assert next_to_baseline(["none", "ours"], 1) == ["none", "ours"]
    assert next_to_baseline(["ours"], 0) == ["ours"]


def test_extra_turns_pair_ours_with_the_baseline_while_kedro_mlflow_sits_out():
    contenders = ["none", "kedro_mlflow", "ours"]
    assert in_turn(contenders, 1, anchor_turns=2) == contenders
    assert in_turn(contenders, 2, anchor_turns=2) == ["none", "ours"]


def test_a_time_target_is_undecided_while_its_pairs_cannot_place_the_median():
    """Ours adds 4 ms per node in most in-process pairs (limit 5), but machine noise puts some
    pairs far off: with 12 pairs the target passes only if the median's interval allows it."""
    pipeline = [f"n{i}" for i in range(10)]
    samples = []
    extras_ms = [4, 4, 3, 4, 4, 4, 3, 4, 4, 4, 30, -20]  # per node
    for repeat, extra_ms in enumerate(extras_ms):
        samples.append(sample("none", "in-process", repeat, pipeline, 2.0, 1.0, 0))
        samples.append(sample("ours", "in-process", repeat, pipeline, 2.0 + extra_ms / 100, 1.0, 3))
    for node in ("n0", "n9"):
        samples.append(sample("none", "per-node", 0, [node], 3.0, 1.5, 0))
        samples.append(sample("ours", "per-node", 0, [node], 3.04, 1.5, 2))
    rows = summarise(samples, ["none", "ours"], {})
    in_process = next(r for r in rows if (r["mode"], r["contender"]) == ("in-process", "ours"))
    assert in_process["pairs"] == 12
    assert in_process["overhead_interval_ms_per_node"] == [3.0, 4.0]  # 3rd and 10th of 12
    targets = {t["target"]: t for t in check_targets(rows, {}, {}, LATENCY_MS, "ours")}
    assert targets["in-process overhead per node (ms) <= 5"]["met"] is True

    # the same with 4 pairs: the interval is their range, -20 .. 30 ms
    few = [s for s in samples if s.mode == "per-node" or s.repeat >= 8]
    rows = summarise(few, ["none", "ours"], {})
    targets = {t["target"]: t for t in check_targets(rows, {}, {}, LATENCY_MS, "ours")}
    assert targets["in-process overhead per node (ms) <= 5"]["met"] == "undecided"
