"""The run-status rules a node step applies, as pure functions of the nodes' outcomes.

RUNNING while the pipeline runs; FAILED the moment a node fails, and for good; FINISHED only
when every node of the pipeline completed. ``finalize``'s terminal rules are in
:func:`kedro_vertex_hooks.lifecycle.plan_finalize`.
"""

from __future__ import annotations

from kedro_vertex_hooks.naming import RUN_FAILED, RUN_FINISHED, RUN_RUNNING
from kedro_vertex_hooks.records import Outcomes


def step_end_status(outcomes: Outcomes, node_count: int) -> str | None:
    """The run status a step that may finish the pipeline sets; None to leave it.

    FAILED is sticky: any failure ever recorded, even of a node that completed on a retry;
    FINISHED only when every node of the pipeline completed.
    """
    if outcomes.any_failed:
        return RUN_FAILED
    if outcomes.every_node_completed(node_count):
        return RUN_FINISHED
    return None


def was_ended_early(status: str) -> bool:
    """True for a run that reads FINISHED or KILLED when a step starts: something else ended
    it (e.g. the fluent run of kedro-vertexai's start step, which MLflow ends FINISHED at that
    process's exit), unless the pipeline really is complete (see :func:`step_start_status`)."""
    return status not in (RUN_RUNNING, RUN_FAILED)


def step_start_status(outcomes: Outcomes, node_count: int) -> str | None:
    """For a run that was ended early: RUNNING again, unless its nodes say it is done."""
    return None if step_end_status(outcomes, node_count) else RUN_RUNNING
