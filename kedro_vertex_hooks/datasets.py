"""Catalog datasets logged into the run without kedro-mlflow: saved files and saved numbers.

``MlflowRunHooks(artifact_datasets=(...), metric_datasets=(...))`` names them; right after a
node saves one, its files go to the artifact folder named after the dataset, or its numbers
become metrics ``<dataset>.<key>``. A dataset that has no local file or holds no numbers gives
a warning, never a failed node.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro_vertex_hooks.kedro_compat import dataset_protocol, dataset_save_path
from kedro_vertex_hooks.naming import flatten, legal_key

logger = logging.getLogger(__name__)

_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def artifact_destinations(dataset: Any, dataset_name: str) -> list[tuple[Path, str]]:
    """The local files (or files under a local folder) that ``dataset`` just saved, each with
    its artifact folder: ``<dataset>/`` plus its place in that folder."""
    local = _local_save_path(dataset, dataset_name)
    if local is None:
        return []
    folder = legal_key(dataset_name)
    if local.is_file():
        return [(local, folder)]
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return [(path, _subfolder(folder, path.parent.relative_to(local))) for path in files]
    logger.warning("Dataset '%s': %s does not exist after saving; not logged.", dataset_name, local)
    return []


def _subfolder(folder: str, relative: Path) -> str:
    return folder if relative == Path(".") else f"{folder}/{relative.as_posix()}"


def _local_save_path(dataset: Any, dataset_name: str) -> Path | None:
    """Where ``dataset`` saved, if that is on this machine; None (with a warning) if not."""
    path = dataset_save_path(dataset)
    if path is None:
        logger.warning(
            "Dataset '%s' (%s) has no file path: nothing to log as an artifact. Remove it "
            "from MlflowRunHooks(artifact_datasets=...) or use a file-based dataset.",
            dataset_name,
            type(dataset).__name__,
        )
        return None
    text = str(path)
    protocol = dataset_protocol(dataset)
    if isinstance(protocol, str) and protocol not in _LOCAL_PROTOCOLS:
        text = f"{protocol}://{text}"
    if "://" in text and not text.startswith("file://"):
        logger.warning(
            "Dataset '%s' saved to %s, which is not a local file: not logged as an artifact.",
            dataset_name,
            text,
        )
        return None
    return Path(text.removeprefix("file://"))


def metric_values(dataset_name: str, data: Any) -> dict[str, float]:
    """Metrics from saved data: a number, or a (nested) dict whose number leaves are kept."""
    if _is_number(data):
        return {legal_key(dataset_name): float(data)}
    if isinstance(data, Mapping):
        flat = flatten({dataset_name: data})
        numbers_only = {legal_key(k): float(v) for k, v in flat.items() if _is_number(v)}
        skipped = sorted(k for k, v in flat.items() if not _is_number(v))
        if skipped:
            logger.warning(
                "Dataset '%s': entries that are not numbers were not logged as metrics: %s",
                dataset_name,
                ", ".join(skipped[:10]),
            )
        if numbers_only:
            return numbers_only
    logger.warning(
        "Dataset '%s' holds no numbers (%s): nothing logged as metrics. Save a number or a "
        "dict of numbers, or remove it from MlflowRunHooks(metric_datasets=...).",
        dataset_name,
        type(data).__name__,
    )
    return {}


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
