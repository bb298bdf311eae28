"""The run-status rules a node step applies, as pure functions of what the run holds.

RUNNING while the pipeline runs; FAILED the moment a node fails, and for good; FINISHED only
when every node of the pipeline completed. ``finalize``'s terminal rules are in
:func:`kedro_vertex_hooks.lifecycle.plan_finalize`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kedro_vertex_hooks.naming import (
    NODE_COMPLETED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_RUNNING,
    TAG_FAILED_NODE,
    TAG_NODE_STATUS,
    node_key,
)


def every_node_completed(tags: Mapping[str, str], pipeline_nodes: Iterable[str]) -> bool:
    return all(tags.get(node_key(TAG_NODE_STATUS, n)) == NODE_COMPLETED for n in pipeline_nodes)


def step_start_status(
    status: str, tags: Mapping[str, str], pipeline_nodes: Iterable[str]
) -> str | None:
    """The status a step's first write sets; None to leave it.

    Only ever RUNNING: a run that reads FINISHED (or KILLED) while a node of the pipeline has
    not completed was ended early by something else, e.g. the fluent run of kedro-vertexai's
    start step, which MLflow ends FINISHED at that process's exit. The step's end settles
    FAILED and FINISHED.
    """
    target = step_end_status(status, tags, pipeline_nodes)
    return RUN_RUNNING if target == RUN_RUNNING else None


def step_end_status(
    status: str, tags: Mapping[str, str], pipeline_nodes: Iterable[str]
) -> str | None:
    """The run status after a step, given what the run holds now; None when unchanged.

    FAILED is sticky; FINISHED only when every node of the pipeline completed; otherwise
    RUNNING (correcting a run that something else ended early).
    """
    if status == RUN_FAILED or TAG_FAILED_NODE in tags:
        target = RUN_FAILED
    elif every_node_completed(tags, pipeline_nodes):
        target = RUN_FINISHED
    else:
        target = RUN_RUNNING
    return None if target == status else target
