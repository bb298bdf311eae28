"""Living beside kedro-mlflow: its datasets log into the shared run, its hook stays out of it.

kedro-mlflow's hook resumes a run through the fluent API, renames it after the pipeline and
ends it FINISHED after every ``kedro run``; in a one-container-per-node pipeline that is
wrong after every step but the last. Its datasets log into the run active in the current
thread, or into a new one. This module points those datasets at the shared run by id and
switches its hook off for the session. Nothing here imports kedro-mlflow.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_KEDRO_MLFLOW = "kedro_mlflow"


def _is_kedro_mlflow(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == _KEDRO_MLFLOW


def switch_off_kedro_mlflow_hook(context: Any) -> bool:
    """Unregister kedro-mlflow's hook from this session's hook manager; True if it was there.

    Its ``after_context_created`` has already been collected for the current call (it sets
    the tracking URI, harmlessly); every later hook of it is skipped.
    """
    manager = getattr(context, "_hook_manager", None)
    if manager is None:
        return False
    found = [plugin for plugin in manager.get_plugins() if _is_kedro_mlflow(plugin)]
    for plugin in found:
        manager.unregister(plugin)
    if found:
        logger.info(
            "kedro-vertex-hooks owns the MLflow run: kedro-mlflow's hook is switched off for "
            "this session (its datasets still log into the run). Set "
            'DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",) in settings.py to make this explicit.'
        )
    return bool(found)


def point_datasets_at_run(catalog: Any, dataset_names: Any, run_id: str) -> list[str]:
    """Give kedro-mlflow datasets among ``dataset_names`` the shared run's id.

    Only datasets whose catalog entry names no run of its own are changed. Returns the names
    of the datasets pointed at the run.
    """
    pointed = []
    for name in dataset_names:
        dataset = _dataset(catalog, name)
        if dataset is None or not _is_kedro_mlflow(dataset):
            continue
        attributes = vars(dataset)
        own_run = attributes.get("_run_id", attributes.get("run_id"))
        if own_run is None and ("run_id" in attributes or "_run_id" in attributes):
            dataset.run_id = run_id
            pointed.append(name)
    return pointed


def _dataset(catalog: Any, name: str) -> Any:
    try:
        return catalog.get(name)
    except Exception:  # a name the catalog cannot materialise is simply not ours to point
        return None
