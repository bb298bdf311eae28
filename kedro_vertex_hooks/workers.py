"""Node hooks for ParallelRunner workers started with ``KEDRO_MP_CONTEXT=spawn``.

Kedro 1.x configures the project in a worker only when ``kedro.framework.project.
PACKAGE_NAME`` is set there, which it never is in a freshly spawned interpreter: such
workers run without ``settings.HOOKS`` and only entry-point plugins are registered. This
plugin is that entry point. It acts only in exactly that situation (project not configured
in this process and a shared run exported by the parent); everywhere else the hooks from
settings.py do the work and this one stays idle, so nothing is logged twice.
"""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl


class SpawnWorkerHooks:
    """Forwards node events to :class:`~kedro_vertex_hooks.hooks.MlflowRunHooks` in spawned
    workers, with the options the parent process used."""

    def __init__(self) -> None:
        self._hooks: Any = None

    def _delegate(self) -> Any:
        from kedro.framework.project import PACKAGE_NAME

        if PACKAGE_NAME is not None:
            return None
        from kedro_vertex_hooks.worker_spec import SessionSpec

        spec = SessionSpec.from_env()
        if spec is None:
            return None
        if self._hooks is None:
            from kedro_vertex_hooks.hooks import MlflowRunHooks
            from kedro_vertex_hooks.kedro_mlflow_compat import keep_kedro_mlflow_hook_idle

            keep_kedro_mlflow_hook_idle()  # registered here even if settings.py disables it
            self._hooks = MlflowRunHooks(**spec.hook_options)
        return self._hooks

    @hook_impl(tryfirst=True)  # before kedro-mlflow's, which must find itself idle
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any]) -> None:
        hooks = self._delegate()
        if hooks is not None:
            hooks.before_node_run(node=node, catalog=catalog, inputs=inputs)

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        hooks = self._delegate()
        if hooks is not None:
            hooks.after_node_run(node=node)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        hooks = self._delegate()
        if hooks is not None:
            hooks.after_dataset_saved(dataset_name=dataset_name, data=data, node=node)

    @hook_impl
    def on_node_error(self, error: Exception, node: Any) -> None:
        hooks = self._delegate()
        if hooks is not None:
            hooks.on_node_error(error=error, node=node)


spawn_worker_hooks = SpawnWorkerHooks()
