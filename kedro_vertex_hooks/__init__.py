"""One MLflow run for a Kedro pipeline that runs one container per node.

``from kedro_vertex_hooks import MlflowRunHooks`` is all settings.py needs. Importing this
package imports neither MLflow nor google-auth: they load when a run needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MlflowRunHooks", "__version__"]

if TYPE_CHECKING:
    from kedro_vertex_hooks.hooks import MlflowRunHooks


def __getattr__(name: str) -> Any:
    if name == "MlflowRunHooks":
        from kedro_vertex_hooks.hooks import MlflowRunHooks

        return MlflowRunHooks
    raise AttributeError(f"module 'kedro_vertex_hooks' has no attribute {name!r}")
