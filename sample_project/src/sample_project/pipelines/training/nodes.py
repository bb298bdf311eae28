"""Small, dependency-free nodes: synthetic data, two models in parallel branches, a report."""

from __future__ import annotations

import random
import time
from typing import Any

Rows = list[dict[str, float]]


def make_raw_data(data: dict[str, Any]) -> Rows:
    rng = random.Random(data["seed"])
    rows = []
    for _ in range(data["n_rows"]):
        x = rng.uniform(-3, 3)
        rows.append({"x": x, "y": 2.0 * x + 1.0 + rng.gauss(0, data["noise"])})
    return rows


def clean_data(rows: Rows, cleaning: dict[str, Any]) -> Rows:
    low, high = cleaning["clip"]["low"], cleaning["clip"]["high"]
    kept = [row for i, row in enumerate(rows) if (i + 1) % cleaning["drop_every"]]
    return [{"x": row["x"], "y": min(max(row["y"], low), high)} for row in kept]


def split_train(rows: Rows, split: dict[str, Any]) -> Rows:
    return rows[: int(len(rows) * (1 - split["test_fraction"]))]


def split_test(rows: Rows, split: dict[str, Any]) -> Rows:
    return rows[int(len(rows) * (1 - split["test_fraction"])) :]


def compute_stats(rows: Rows) -> dict[str, float]:
    ys = [row["y"] for row in rows]
    return {"rows": len(rows), "mean_y": sum(ys) / len(ys), "max_y": max(ys)}


def train_linear(rows: Rows, params: dict[str, Any]) -> dict[str, float]:
    weight, bias = 0.0, 0.0
    l2 = params["regularization"]["l2"]
    for _ in range(params["epochs"]):
        for row in rows:
            error = weight * row["x"] + bias - row["y"]
            weight -= params["learning_rate"] * (error * row["x"] + l2 * weight) / 10
            bias -= params["learning_rate"] * error / 10
    return {"weight": weight, "bias": bias}


def train_tree(rows: Rows, params: dict[str, Any]) -> dict[str, Any]:
    """A depth-limited piecewise-constant model: a stand-in for a decision tree."""
    ordered = sorted(rows, key=lambda row: row["x"])
    buckets = 2 ** params["max_depth"]
    size = max(len(ordered) // buckets, params["min_samples"]["leaf"])
    leaves = []
    for start in range(0, len(ordered), size):
        chunk = ordered[start : start + size]
        leaves.append({"upper_x": chunk[-1]["x"], "value": sum(r["y"] for r in chunk) / len(chunk)})
    return {"leaves": leaves}


def _mae(predictions: list[float], rows: Rows) -> float:
    return sum(abs(p - row["y"]) for p, row in zip(predictions, rows, strict=True)) / len(rows)


def evaluate_linear(model: dict[str, float], rows: Rows) -> dict[str, float]:
    predictions = [model["weight"] * row["x"] + model["bias"] for row in rows]
    return {"mae": round(_mae(predictions, rows), 6), "rows": len(rows)}


def evaluate_tree(model: dict[str, Any], rows: Rows) -> dict[str, float]:
    def predict(x: float) -> float:
        for leaf in model["leaves"]:
            if x <= leaf["upper_x"]:
                return leaf["value"]
        return model["leaves"][-1]["value"]

    return {"mae": round(_mae([predict(row["x"]) for row in rows], rows), 6), "rows": len(rows)}


def select_model(
    linear_metrics: dict[str, float], tree_metrics: dict[str, float], selection: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, float]], float]:
    """The choice, the scores as ``{name: {"value", "step"}}`` (kedro-mlflow's metrics
    history format) and the best score as one number (for a single-metric dataset)."""
    metric = selection["metric"]
    best = "linear" if linear_metrics[metric] <= tree_metrics[metric] else "tree"
    choice = {"best": best, "metric": metric, "linear": linear_metrics, "tree": tree_metrics}
    scores = {
        f"{name}_{metric}": {"value": float(metrics[metric]), "step": 0}
        for name, metrics in (("linear", linear_metrics), ("tree", tree_metrics))
    }
    return choice, scores, float(min(linear_metrics[metric], tree_metrics[metric]))


def write_report(choice: dict[str, Any], stats: dict[str, float], report: dict[str, Any]) -> dict:
    return {"title": report["title"], "choice": choice, "stats": stats}


def quality_gate(report: dict[str, Any], failure: dict[str, Any]) -> dict[str, Any]:
    time.sleep(failure["sleep_s"])
    if failure["fail"]:
        raise ValueError("quality gate rejected the model (failure.fail is true)")
    return {**report, "approved": True}


def publish(report: dict[str, Any]) -> dict[str, Any]:
    return {"published": True, "best": report["choice"]["best"]}
