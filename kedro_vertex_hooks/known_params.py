"""What the shared run is known to hold of its params, and what a write may still send.

MLflow refuses a param whose key the run holds with another value, and the whole batch with
it. So a write sends only the params the run does not hold yet; a key held with another
value is a conflict, raised (``on_param_conflict="fail"``) or moved to a tag. Another
container may log a key between this one's read and its write: the server's refusal says so
(:func:`is_param_race`), and the writer refreshes what it knows once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import MAX_TAG_VALUE_LENGTH, TAG_PARAM_CONFLICT, node_key, trim

if TYPE_CHECKING:
    from kedro_vertex_hooks.batching import Write

logger = logging.getLogger(__name__)

# What the server answers when another container logged one of a batch's param keys since
# this one read the run: with another value, or with the same one at the same moment (the
# SQL store does not retry that duplicate-key race for params; sqlite, then PostgreSQL words).
_PARAM_RACE_SIGNS = (
    "Changing param values is not allowed",
    "UNIQUE constraint failed: params.",
    "duplicate key value violates unique constraint",
)


class ParamConflictError(UserError):
    """A parameter already logged in the run with another value (``on_param_conflict="fail"``)."""


def is_param_race(exc: BaseException) -> bool:
    """Whether the server refused a batch because the run got one of its param keys since
    this process last learnt what it holds."""
    return any(sign in str(exc) for sign in _PARAM_RACE_SIGNS)


class KnownParams:
    """The params one run is known to hold (empty for a run resumed by id, which is not read
    whole), shared by the caller's thread and the writer's threads."""

    def __init__(
        self, run_id: str, known: Mapping[str, str], on_conflict: Literal["tag", "fail"]
    ) -> None:
        self._run_id = run_id
        self._values = dict(known)
        self._on_conflict = on_conflict
        self._lock = threading.Lock()

    def new_in(self, write: Write) -> dict[str, str]:
        """The params of ``write`` the run does not hold yet (equal re-logs are not sent)."""
        with self._lock:
            return self._new_in(write)

    def learn(self, params: Mapping[str, str]) -> None:
        """The run now holds ``params`` (a request carrying them was answered)."""
        with self._lock:
            self._values.update(params)

    def move_conflicts(self, write: Write) -> list[str]:
        """Move params whose key the run holds with another value out of ``write`` (into a
        tag each, or raise :class:`ParamConflictError`); the keys moved."""
        with self._lock:
            return self._move_conflicts(write)

    def refresh(self, logged: Mapping[str, str], request: Write) -> list[str]:
        """After a param race: learn what the run holds (``logged``), move the conflicts out of
        ``request`` and keep in it only the params still to send; the keys moved."""
        with self._lock:
            self._values.update(logged)
            moved = self._move_conflicts(request)
            request.params = self._new_in(request)
            return moved

    def _new_in(self, write: Write) -> dict[str, str]:
        return {k: v for k, v in write.params.items() if self._values.get(k) != v}

    def _move_conflicts(self, write: Write) -> list[str]:
        moved = []
        for key in [k for k, v in write.params.items() if self._values.get(k, v) != v]:
            value = write.params.pop(key)
            message = (
                f"Parameter '{key}' is already logged in MLflow run {self._run_id} with value "
                f"{trim(self._values[key], 200)!r}; this step has {trim(value, 200)!r}"
            )
            if self._on_conflict == "fail":
                raise ParamConflictError(
                    message + ". Set MlflowRunHooks(on_param_conflict='tag') to record it as "
                    "a tag instead."
                )
            logger.warning("%s: recorded as tag %s", message, node_key(TAG_PARAM_CONFLICT, key))
            moved.append(key)
            write.tags[node_key(TAG_PARAM_CONFLICT, key)] = trim(value, MAX_TAG_VALUE_LENGTH)
        return moved
