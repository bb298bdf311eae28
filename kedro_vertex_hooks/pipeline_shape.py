"""The pipeline's shape, as a step sees it: which nodes it has, and whether a step's nodes
can be the pipeline's last.

Pure functions of Kedro pipelines (the registered ones, read from Kedro's project settings).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kedro.pipeline import Pipeline


def registered_pipelines(pipeline_name: str) -> list[Pipeline]:
    """The registered pipelines ``pipeline_name`` joins with ``+``; empty when the project
    does not register one of them."""
    from kedro.framework.project import pipelines

    found = [pipelines.get(name) for name in pipeline_name.split("+")]
    return [] if any(pipeline is None for pipeline in found) else found


def pipeline_node_names(pipeline_name: str) -> list[str]:
    """Node names of the whole pipeline a step belongs to (not its ``--nodes`` subset)."""
    return [node.name for p in registered_pipelines(pipeline_name) for node in p.nodes]


def has_node_downstream(pipelines: Iterable[Pipeline], step_nodes: Iterable[str]) -> bool:
    """Whether a node outside this step depends, directly or not, on one of its nodes.

    An orchestrator starts such a node only after this step, so the pipeline cannot be
    complete at this step's end. A node depending on the step at all depends on it directly
    or through another node outside it, so one pass over the direct consumers of the step's
    outputs answers (Kedro's ``Pipeline.from_nodes`` builds pipelines: ~O(N) ms at N nodes).
    """
    step = set(step_nodes)
    for pipeline in pipelines:
        produced = {
            _untranscoded(dataset)
            for node in pipeline.nodes
            if node.name in step
            for dataset in node.outputs
        }
        for node in pipeline.nodes:
            if node.name not in step and any(
                _untranscoded(dataset) in produced for dataset in node.inputs
            ):
                return True
    return False


def holds_every_leaf(pipelines: Iterable[Pipeline], step_nodes: Iterable[str]) -> bool:
    """Whether every node of the pipeline that nothing depends on runs in this step.

    Such a step runs after every other node (an orchestrator starts a node after the nodes
    it depends on), so the outcomes it reads while its nodes run already decide the run's
    status. With a leaf outside it, another step may be finishing at the same moment.
    """
    step = set(step_nodes)
    for pipeline in pipelines:
        consumed = {_untranscoded(dataset) for node in pipeline.nodes for dataset in node.inputs}
        for node in pipeline.nodes:
            is_leaf = not any(_untranscoded(dataset) in consumed for dataset in node.outputs)
            if is_leaf and node.name not in step:
                return False
    return True


def _untranscoded(dataset_name: str) -> str:
    """``data@pandas`` and ``data@spark`` are one dataset to Kedro's dependency graph."""
    return dataset_name.split("@", 1)[0]
