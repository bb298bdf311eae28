"""Thirteen named nodes; data stats and the two model branches run in parallel.

The ``group.*`` tags are kedro-vertexai's grouping convention (``TagNodeGrouper``): with
grouping on, each group's nodes run in one step (``kedro run --nodes "a,b,..."``).
"""

from kedro.pipeline import Pipeline, node

from sample_project.pipelines.training import nodes as n


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            node(
                n.make_raw_data, "params:data", "raw_data", name="make_raw_data", tags="group.prep"
            ),
            node(
                n.clean_data,
                ["raw_data", "params:cleaning"],
                "clean_data",
                name="clean_data",
                tags="group.prep",
            ),
            node(
                n.split_train,
                ["clean_data", "params:split"],
                "train_set",
                name="split_train",
                tags="group.prep",
            ),
            node(
                n.split_test,
                ["clean_data", "params:split"],
                "test_set",
                name="split_test",
                tags="group.prep",
            ),
            node(
                n.compute_stats, "clean_data", "data_stats", name="compute_stats", tags="group.prep"
            ),
            node(
                n.train_linear,
                ["train_set", "params:model.linear"],
                "linear_model",
                name="train_linear",
                tags="group.models",
            ),
            node(
                n.train_tree,
                ["train_set", "params:model.tree"],
                "tree_model",
                name="train_tree",
                tags="group.models",
            ),
            node(
                n.evaluate_linear,
                ["linear_model", "test_set"],
                "linear_metrics",
                name="evaluate_linear",
                tags="group.models",
            ),
            node(
                n.evaluate_tree,
                ["tree_model", "test_set"],
                "tree_metrics",
                name="evaluate_tree",
                tags="group.models",
            ),
            node(
                n.select_model,
                ["linear_metrics", "tree_metrics", "params:selection"],
                ["model_choice", "model_scores", "best_score"],
                name="select_model",
            ),
            node(
                n.write_report,
                ["model_choice", "data_stats", "params:report"],
                "report",
                name="write_report",
            ),
            node(
                n.quality_gate,
                ["report", "params:failure"],
                "approved_report",
                name="quality_gate",
                tags="group.release",
            ),
            node(n.publish, "approved_report", "publication", name="publish", tags="group.release"),
        ]
    )
