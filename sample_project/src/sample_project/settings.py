"""sample_project settings: the one line a project needs to track its runs in MLflow."""

from kedro_vertex_hooks import MlflowRunHooks

HOOKS = (
    MlflowRunHooks(
        # Without kedro-mlflow: log these catalog datasets into the shared run after each save.
        artifact_datasets=("report",),
        metric_datasets=("linear_metrics", "tree_metrics"),
    ),
)

# kedro-mlflow, when installed, is switched off by MlflowRunHooks anyway; saying so here
# keeps it off in ParallelRunner worker processes too.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
