"""Kedro internals this package reads, in one place: what Kedro offers no public API for.

Each function says what it reads and falls back to None (or a public route) when a Kedro
release no longer has it, so a change in Kedro shows up here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def unregister_plugins(context: Any, belongs: Callable[[Any], bool]) -> list[Any]:
    """Unregister, for this session, the hook plugins ``belongs`` picks; the ones it found.

    Reads the session's pluggy manager (``KedroContext._hook_manager``). A hook call already
    under way (e.g. the ``after_context_created`` that calls this) still reaches them.
    """
    manager = getattr(context, "_hook_manager", None)
    if manager is None:
        return []
    found = [plugin for plugin in manager.get_plugins() if belongs(plugin)]
    for plugin in found:
        manager.unregister(plugin)
    return found


def package_name(context: Any, project_path: Path) -> str:
    """The project's package name (``KedroContext._package_name``, else from pyproject)."""
    name = getattr(context, "_package_name", None)
    if name:
        return str(name)
    from kedro.framework.startup import bootstrap_project

    return bootstrap_project(project_path).package_name


def dataset_protocol(dataset: Any) -> str | None:
    """An fsspec dataset's protocol (``_protocol``), which it strips from its path."""
    protocol = getattr(dataset, "_protocol", None)
    return protocol if isinstance(protocol, str) else None


def dataset_save_path(dataset: Any) -> Any:
    """The path of the last save: for a versioned dataset, the version folder's file."""
    if getattr(dataset, "_version", None) and callable(
        getattr(dataset, "resolve_save_version", None)
    ):
        try:
            return dataset._get_versioned_path(dataset.resolve_save_version())
        except Exception:  # a dataset that versions differently: fall back to its plain path
            pass
    for attribute in ("_filepath", "filepath", "_path", "path"):
        value = getattr(dataset, attribute, None)
        if value:
            return value
    try:
        described = dataset._describe()
    except Exception:
        return None
    return described.get("filepath") if isinstance(described, Mapping) else None
