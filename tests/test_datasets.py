"""Which numbers become metrics and which files become artifacts, on real Kedro datasets."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from kedro.io import MemoryDataset, Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.partitions import PartitionedDataset
from sample_project.datasets import JSONFile

from kedro_vertex_hooks.datasets import artifact_destinations, metric_values


def test_a_number_is_one_metric_named_after_the_dataset():
    assert metric_values("best_score", 0.25) == {"best_score": 0.25}
    assert metric_values("rows", 48) == {"rows": 48.0}


def test_a_nested_dict_gives_one_metric_per_number_leaf():
    data = {"mae": 0.3, "by_split": {"train": {"mae": 0.2}, "test": {"mae": 0.4}}}
    assert metric_values("linear#metrics", data) == {
        "linear_metrics.mae": 0.3,
        "linear_metrics.by_split.train.mae": 0.2,
        "linear_metrics.by_split.test.mae": 0.4,
    }


def test_entries_that_are_not_finite_numbers_are_left_out_with_a_warning(caplog):
    data = {"mae": 0.3, "model": "linear", "ok": True, "nan": math.nan, "inf": math.inf}
    with caplog.at_level(logging.WARNING, logger="kedro_vertex_hooks.datasets"):
        assert metric_values("scores", data) == {"scores.mae": 0.3}
    warning = caplog.text
    for skipped in ("scores.model", "scores.ok", "scores.nan", "scores.inf"):
        assert skipped in warning


def test_data_without_numbers_logs_nothing_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="kedro_vertex_hooks.datasets"):
        assert metric_values("summary", "all good") == {}
        assert metric_values("empty", {}) == {}
        assert metric_values("flag", True) == {}
        assert metric_values("nan", math.nan) == {}
    assert "Dataset 'summary' holds no numbers (str)" in caplog.text
    assert "Dataset 'empty' holds no numbers (dict)" in caplog.text
    assert "Dataset 'flag' holds no numbers (bool)" in caplog.text


def test_a_saved_file_is_logged_under_a_folder_named_after_the_dataset(tmp_path):
    dataset = JSONFile(filepath=str(tmp_path / "data" / "report.json"))
    dataset.save({"title": "report"})
    assert artifact_destinations(dataset, "report") == [
        (tmp_path / "data" / "report.json", "report")
    ]


def test_a_versioned_dataset_logs_the_version_it_just_saved_not_older_ones(tmp_path):
    filepath = str(tmp_path / "metrics.json")
    first = JSONDataset(filepath=filepath, version=Version(None, "2026-01-01T00.00.00.000Z"))
    first.save({"mae": 1})
    second = JSONDataset(filepath=filepath, version=Version(None, "2026-01-02T00.00.00.000Z"))
    second.save({"mae": 2})

    [(path, folder)] = artifact_destinations(second, "metrics")
    assert path == tmp_path / "metrics.json" / "2026-01-02T00.00.00.000Z" / "metrics.json"
    assert json.loads(path.read_text()) == {"mae": 2}
    assert folder == "metrics"


def test_a_folder_dataset_keeps_its_layout_under_the_dataset_folder(tmp_path):
    dataset = PartitionedDataset(
        path=str(tmp_path / "parts"), dataset="json.JSONDataset", filename_suffix=".json"
    )
    dataset.save({"a": {"x": 1}, "sub/b": {"y": 2}})
    assert artifact_destinations(dataset, "my#parts") == [
        (tmp_path / "parts" / "a.json", "my_parts"),
        (tmp_path / "parts" / "sub" / "b.json", "my_parts/sub"),
    ]


def test_datasets_without_a_local_file_log_nothing_and_say_why(tmp_path, caplog):
    remote = JSONDataset(filepath="memory://bucket/remote.json")
    remote.save({"a": 1})
    missing = JSONFile(filepath=str(tmp_path / "never_saved.json"))
    with caplog.at_level(logging.WARNING, logger="kedro_vertex_hooks.datasets"):
        assert artifact_destinations(MemoryDataset({"a": 1}), "in_memory") == []
        assert artifact_destinations(remote, "remote") == []
        assert artifact_destinations(missing, "missing") == []
    assert "Dataset 'in_memory' (MemoryDataset) has no file path" in caplog.text
    assert "Dataset 'remote' saved to memory://" in caplog.text
    assert "which is not a local file" in caplog.text
    assert "Dataset 'missing':" in caplog.text and "does not exist after saving" in caplog.text


def test_a_local_dataset_whose_path_names_the_file_protocol_is_logged(tmp_path):
    target = tmp_path / "local.json"
    dataset = JSONDataset(filepath=f"file://{target.as_posix()}")
    dataset.save({"a": 1})
    assert artifact_destinations(dataset, "local") == [(Path(target), "local")]
