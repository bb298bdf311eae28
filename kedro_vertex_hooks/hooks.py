"""Kedro hooks: translate Kedro's events into calls on the process's tracking session.

Register in ``settings.py``::

    from kedro_vertex_hooks import MlflowRunHooks
    HOOKS = (MlflowRunHooks(),)

Every decision (which run, what to log, which status) lives in the modules these hooks call;
each hook here only picks the session for the current process and forwards the event.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl

from kedro_vertex_hooks.config import ProjectConfig, load_project_config, parse_options
from kedro_vertex_hooks.kedro_mlflow_compat import (
    point_datasets_at_run,
    switch_off_kedro_mlflow_hook,
)
from kedro_vertex_hooks.kedro_vertexai_compat import (
    in_kedro_vertexai_start_step,
    keep_start_step_run_running,
    switch_off_kedro_vertexai_tags_hook,
)
from kedro_vertex_hooks.naming import DEFAULT_PIPELINE
from kedro_vertex_hooks.pipeline_shape import (
    has_node_downstream,
    holds_every_leaf,
    pipeline_node_names,
    registered_pipelines,
)
from kedro_vertex_hooks.resolve import RunSource

if TYPE_CHECKING:
    from concurrent.futures import Future

    from kedro.framework.context import KedroContext
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Node, Pipeline

    from kedro_vertex_hooks.session import TrackingSession
    from kedro_vertex_hooks.tracking_client import TrackingClient

logger = logging.getLogger(__name__)

_passive = False


@contextlib.contextmanager
def passive() -> Iterator[None]:
    """Keep the hooks idle while this package's own commands load the project context."""
    global _passive
    previous, _passive = _passive, True
    try:
        yield
    finally:
        _passive = previous


def _pipeline_name(run_params: dict[str, Any]) -> str:
    names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or DEFAULT_PIPELINE
    return names if isinstance(names, str) else "+".join(names)


class MlflowRunHooks:
    """Log every node of a Kedro pipeline into one MLflow run, across processes.

    Options are keyword arguments, all optional, validated at construction (see
    docs/reference.md and :class:`kedro_vertex_hooks.config.HookOptions`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(options)
        self._config: ProjectConfig | None = None
        self._context: KedroContext | None = None
        self._source: RunSource | None = None
        self._session: TrackingSession | None = None
        self._session_pid = os.getpid()
        self._pipeline_nodes: list[str] = []
        self._may_finish_pipeline = True
        self._restore_env: dict[str, str | None] = {}
        self._catalog: CatalogProtocol | None = None
        self._opening: Future[TrackingSession] | None = None

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: KedroContext) -> None:
        """Read the run source before anything can remove MLFLOW_RUN_ID; check the config.

        What needs no pipeline name starts now, in the background, while Kedro builds the
        catalog and loads the pipelines: a run to resume is read; for a run to create on a
        tracking server, its experiment is looked up. ``before_pipeline_run`` waits for it
        and raises its errors.
        """
        if _passive:
            return
        self._source = RunSource.from_env()
        self._context = context
        self._config = load_project_config(context)
        switch_off_kedro_mlflow_hook(context)
        switch_off_kedro_vertexai_tags_hook(context)
        if in_kedro_vertexai_start_step():
            keep_start_step_run_running()
        if self._source.mode == "resume" or self._config.tracking_uri.startswith("http"):
            # (a local store needs MLflow's client, whose import a pipeline with tracking
            # disabled must not pay)
            self._opening = self._open_in_background()

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        """Resolve and check the run before the first node; fail the step if it is unusable."""
        if _passive or self._config is None or self._source is None:
            return
        from kedro_vertex_hooks.retry import TrackingUnreachableError

        self._catalog = catalog
        name = _pipeline_name(run_params)
        if name in self._config.mlflow.tracking.disable_tracking.pipelines:
            self._opening = None
            logger.info(
                "Pipeline '%s' is listed in mlflow.yml tracking.disable_tracking.pipelines: "
                "not tracked.",
                name,
            )
            return
        step_nodes = [n.name for n in pipeline.nodes]
        self._pipeline_nodes = pipeline_node_names(name) or step_nodes
        registered = registered_pipelines(name)
        self._may_finish_pipeline = not has_node_downstream(registered, step_nodes)
        opening, self._opening = self._opening, None
        try:
            self._session = opening.result()(name) if opening else self._open_session(name)
        except TrackingUnreachableError as exc:
            if not self.options.run_untracked_if_unreachable:
                raise
            logger.warning("%s Running this step UNTRACKED: nothing of it reaches MLflow.", exc)
            return
        self._session.begin_pipeline(name, self._pipeline_nodes)
        if self._may_finish_pipeline and holds_every_leaf(registered, step_nodes):
            self._session.read_outcomes_ahead()
        self._session_pid = os.getpid()
        self._restore_env = self._session.export_to_children()
        logger.info(
            "Logging into MLflow run %s at %s (%s)",
            self._session.run_id,
            self._config.tracking_uri,
            self._source.describe(),
        )

    def _open_session(
        self,
        pipeline_name: str = DEFAULT_PIPELINE,
        client: TrackingClient | None = None,
        experiment_id: str | None = None,
    ) -> TrackingSession:
        from kedro_vertex_hooks.session import TrackingSession

        assert self._config is not None and self._source is not None
        return TrackingSession.open(
            self._config,
            self.options,
            self._source,
            self._context,
            pipeline_name,
            client,
            experiment_id,
        )

    def _open_in_background(self) -> Future[Callable[[str], TrackingSession]]:
        """Connect here, then read the run to resume, or look up the experiment of the run to
        create, on a daemon thread; the future gives what is left to do once the pipeline's
        name is known.

        Connecting is CPU work (imports, the auth provider); reading the run is mostly a wait
        on the network. On the daemon thread the CPU work would take the GIL from Kedro's
        thread in turns, hundreds of times, which costs the step more CPU than it does here.
        A failure to connect is raised where the session is awaited, as the open's would be.
        """
        from concurrent.futures import Future

        import kedro_vertex_hooks.session  # noqa: F401  (its imports are CPU work too)
        from kedro_vertex_hooks.connection import connect
        from kedro_vertex_hooks.resolve import active_experiment_id
        from kedro_vertex_hooks.writer import in_background

        config = self._config
        assert config is not None and self._source is not None
        try:
            client = connect(config, self.options, self._context)
        except Exception as exc:
            failed: Future[Callable[[str], TrackingSession]] = Future()
            failed.set_exception(exc)
            return failed

        def read_run() -> Callable[[str], TrackingSession]:
            session = self._open_session(client=client)
            return lambda _pipeline_name: session

        def look_up_experiment() -> Callable[[str], TrackingSession]:
            experiment_id = active_experiment_id(client, config.experiment_name)
            return lambda pipeline_name: self._open_session(pipeline_name, client, experiment_id)

        if self._source.mode == "resume":
            return in_background(read_run, "open")
        return in_background(look_up_experiment, "experiment")

    def _here(self) -> TrackingSession | None:
        """This process's session: the parent's, or one rebuilt in a worker process."""
        if self._session is not None and self._session_pid == os.getpid():
            return self._session
        from kedro_vertex_hooks.worker_spec import SessionSpec

        spec = SessionSpec.from_env()
        if spec is None:
            return None
        from kedro_vertex_hooks.session import TrackingSession

        self._session = TrackingSession.for_worker(spec, self.options)
        self._session_pid = os.getpid()
        return self._session

    @hook_impl
    def before_node_run(self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any]) -> None:
        session = self._here()
        if session is None:
            return
        self._catalog = catalog
        point_datasets_at_run(catalog, node.outputs, session.run_id)
        session.node_started(node.name, inputs)

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        session = self._here()
        if session is not None:
            session.node_ran(node.name, node.outputs)

    @hook_impl
    def on_node_error(self, error: Exception, node: Node) -> None:
        session = self._here()
        if session is not None:
            session.node_failed(node.name, error)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        session = self._here()
        if session is None:
            return
        if dataset_name in self.options.logged_datasets:
            dataset = self._catalog.get(dataset_name) if self._catalog is not None else None
            session.dataset_saved(dataset_name, dataset, data)
        session.output_saved(node.name, dataset_name)

    @hook_impl
    def after_pipeline_run(self) -> None:
        with self._ending_step() as session:
            if session is not None:
                status = session.finish_step(may_finish_pipeline=self._may_finish_pipeline)
                logger.info("MLflow run %s is %s", session.run_id, status)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        with self._ending_step() as session:
            if session is not None:
                session.fail_step(error)

    @contextlib.contextmanager
    def _ending_step(self) -> Iterator[TrackingSession | None]:
        """The step's session, taken for its last writes; the environment is restored after
        them, so that no writer thread is still sending while it changes."""
        session, self._session = self._session, None
        try:
            yield session
        finally:
            for name, value in self._restore_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._restore_env = {}
