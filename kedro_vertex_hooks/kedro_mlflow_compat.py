"""Living beside kedro-mlflow: its datasets log into the shared run, its hook stays out of it.

kedro-mlflow's hook resumes a run through the fluent API, renames it after the pipeline and
ends it FINISHED after every ``kedro run``; in a one-container-per-node pipeline that is
wrong after every step but the last. Its datasets log into the run active in the current
thread, or into a new one. This module points those datasets at the shared run by id,
switches its hook off for the session and keeps it idle in ParallelRunner workers. Nothing
here imports kedro-mlflow.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from kedro_vertex_hooks.kedro_compat import unregister_plugins

logger = logging.getLogger(__name__)

_KEDRO_MLFLOW = "kedro_mlflow"
_KEDRO_MLFLOW_HOOK_MODULE = "kedro_mlflow.framework.hooks.mlflow_hook"
_KEYED_METRIC_DATASETS = frozenset({"MlflowMetricDataset", "MlflowMetricHistoryDataset"})
_PREFIXED_METRICS_DATASET = "MlflowMetricsHistoryDataset"


def _is_kedro_mlflow(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == _KEDRO_MLFLOW


def switch_off_kedro_mlflow_hook(context: Any) -> bool:
    """Unregister kedro-mlflow's hook from this session's hook manager; True if it was there.

    Its ``after_context_created`` has already been collected for the current call and still
    runs (it reads mlflow.yml, sets the tracking URI and experiment, exports
    ``server.credentials``: harmless); every later hook of it is skipped.
    """
    found = unregister_plugins(context, _is_kedro_mlflow)
    for plugin in found:
        _idle(plugin)  # forked ParallelRunner workers register this same object again
    if found:
        logger.info(
            "kedro-vertex-hooks owns the MLflow run: kedro-mlflow's hook is switched off for "
            "this session (its datasets still log into the run). Without kedro-vertexai (whose "
            'start step needs it), DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",) in '
            "settings.py makes this explicit."
        )
    return bool(found)


def keep_kedro_mlflow_hook_idle() -> bool:
    """In a ParallelRunner worker, make kedro-mlflow's hook log nothing; True if it is loaded.

    Workers register entry-point hooks afresh for every node, spawned ones even when
    settings.py disables kedro-mlflow (they never load settings.py). Its ``before_node_run``
    would log the node's params through MLflow's fluent API, which resumes the shared run
    from ``MLFLOW_RUN_ID``: unflattened and unmasked, failing the node on a changed value,
    and ending the run FINISHED when a spawned worker exits. Call it before that hook runs.
    """
    module = sys.modules.get(_KEDRO_MLFLOW_HOOK_MODULE)
    plugin = getattr(module, "mlflow_hook", None)
    if plugin is None:
        return False
    _idle(plugin)
    return True


def _idle(plugin: Any) -> None:
    """kedro-mlflow's own off switch: the flag its hook sets for a pipeline whose tracking
    is disabled in mlflow.yml; with no run of its own, the hook then logs nothing."""
    if hasattr(plugin, "_is_mlflow_enabled") and getattr(plugin, "run_id", None) is None:
        plugin._is_mlflow_enabled = False


def point_datasets_at_run(catalog: Any, dataset_names: Any, run_id: str) -> list[str]:
    """Give kedro-mlflow datasets among ``dataset_names`` the shared run's id.

    Only datasets whose catalog entry names no run of its own are changed. Metric datasets
    without a key or prefix are named after their catalog entry, as kedro-mlflow's own hook
    does when it is active (without it, ``MlflowMetricDataset`` has no metric name at all).
    Returns the names of the datasets pointed at the run.
    """
    pointed = []
    for name in dataset_names:
        dataset = _dataset(catalog, name)
        if dataset is None or not _is_kedro_mlflow(dataset):
            continue
        _name_metrics_after_entry(dataset, name)
        attributes = vars(dataset)
        own_run = attributes.get("_run_id", attributes.get("run_id"))
        if own_run is None and ("run_id" in attributes or "_run_id" in attributes):
            dataset.run_id = run_id
            pointed.append(name)
    return pointed


def _name_metrics_after_entry(dataset: Any, name: str) -> None:
    classes = {cls.__name__ for cls in type(dataset).__mro__}
    if classes & _KEYED_METRIC_DATASETS and getattr(dataset, "key", "") is None:
        dataset.key = name
    if _PREFIXED_METRICS_DATASET in classes and getattr(dataset, "_prefix", "") is None:
        dataset._prefix = name


def _dataset(catalog: Any, name: str) -> Any:
    try:
        return catalog.get(name)
    except Exception:  # a name the catalog cannot materialise is simply not ours to point
        return None
