"""Batches: what one write to the run carries, and how writes share MLflow's requests.

The rules the writer's queue follows (``writer.py``): how long a write may wait for others,
how many ``log-batch`` requests a batch takes within MLflow's per-request limits, where a
batch ends, and how many requests may go to the server at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from kedro_vertex_hooks.rest_client import (
    MAX_ENTITIES_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    batch_chunks,
)

if TYPE_CHECKING:
    import threading

    from kedro_vertex_hooks.tracking_client import Metric

LINGER_S = 0.02  # how long the background thread waits for more writes before sending
# A node's start waits up to this long for its end, so that a short node's step sends one
# request for both; a longer node's start is still in the run within a second.
START_LINGER_S = 1.0
# A write's requests sent at once to a tracking server: a process logging many params (fast
# nodes in one process, a node with 1000 params) waits a round trip per few requests.
REQUESTS_AT_ONCE = 4


def requests_at_once(tracking_uri: str) -> int:
    """A tracking server takes a write's requests at once; a local store (one database file,
    no round trip to hide) takes them one by one."""
    return REQUESTS_AT_ONCE if tracking_uri.startswith(("http://", "https://")) else 1


def deadline_of(item: Write | threading.Event | None) -> float:
    """When the batch that ``item`` joins must be sent, at the latest."""
    return time.monotonic() + (item.linger_s if isinstance(item, Write) else 0.0)


class Load(msgspec.Struct):
    """What a batch carries, counted as MLflow's per-request limits count it."""

    params: int = 0
    tags: int = 0
    values: int = 0

    def plus(self, write: Write) -> Load:
        return Load(
            self.params + len(write.params), self.tags + len(write.tags), self.values + write.size()
        )

    def requests(self) -> int:
        """``log-batch`` requests it takes (see :func:`requests_of`)."""
        return max(
            -(-self.params // MAX_PARAMS_TAGS_PER_BATCH),
            -(-self.tags // MAX_PARAMS_TAGS_PER_BATCH),
            -(-self.values // MAX_ENTITIES_PER_BATCH),
        )


def shares_a_request(batch: Load, write: Write) -> bool:
    """Whether ``write`` sent with the batch takes fewer requests than sent after it. When it
    does not, the batch's requests are full: lingering for more would only queue requests
    for the step's end (many fast nodes with many params each, in one process)."""
    alone = Load().plus(write).requests()
    return batch.plus(write).requests() < batch.requests() + alone


def last_batch_start(writes: list[Write]) -> int:
    """Where the last of the batches that ``writes`` make in turn starts: a write that would
    not share a request with the batch before it starts the next one."""
    start, load = 0, Load()
    for index, write in enumerate(writes):
        if index and not shares_a_request(load, write):
            start, load = index, Load()
        load = load.plus(write)
    return start


class Write(msgspec.Struct):
    """One unit of work for the run: data to log, then optionally a status or an artifact."""

    params: dict[str, str] = msgspec.field(default_factory=dict)
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    metrics: list[Metric] = msgspec.field(default_factory=list)
    status: str | None = None
    artifact: tuple[str, str | None] | None = None  # (local path, artifact folder)
    linger_s: float = LINGER_S  # how long it may wait in the queue for the next write

    def is_empty(self) -> bool:
        return not (self.params or self.tags or self.metrics or self.status or self.artifact)

    def size(self) -> int:
        """How many values this write carries (params, tags, metrics, status, artifact)."""
        return len(self.names())

    def names(self) -> list[str]:
        """What this write carries, by name, for a report of what was not delivered."""
        names = [*self.params, *self.tags, *(metric.key for metric in self.metrics)]
        if self.status is not None:
            names.append(f"run status {self.status}")
        if self.artifact is not None:
            names.append(f"artifact {self.artifact[0]}")
        return names

    def merge(self, other: Write) -> None:
        self.params.update(other.params)
        self.tags.update(other.tags)
        self.metrics.extend(other.metrics)


def requests_of(write: Write, new_params: dict[str, str]) -> list[Write]:
    """The log-batch requests ``write`` takes when ``new_params`` are the params of it the run
    does not hold yet: its tags and metrics with them, within MLflow's per-request limits."""
    chunks = batch_chunks(list(new_params.items()), list(write.tags.items()), list(write.metrics))
    return [Write(params=dict(p), tags=dict(t), metrics=m) for p, t, m in chunks]
