"""What a ParallelRunner worker process needs to log into the parent's run, and how it knows
it is one.

The parent's :class:`~kedro_vertex_hooks.session.TrackingSession` exports a
:class:`SessionSpec` in the environment before Kedro starts its workers; a worker rebuilds its
session from it (``hooks.py``, or ``workers.py`` when the worker has no project settings).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from kedro_vertex_hooks.config import ParamsConfig, RequestHeaderProviderConfig, parse_section

SESSION_ENV = "KEDRO_VERTEX_HOOKS_SESSION"


class SessionSpec(msgspec.Struct, frozen=True):
    """What a worker process needs to log into the same run, as JSON in ``SESSION_ENV``."""

    tracking_uri: str
    run_id: str
    params_config: dict[str, Any]
    header_provider_config: dict[str, Any]
    hook_options: dict[str, Any]
    pipeline_nodes: list[str] = msgspec.field(default_factory=list)  # their order gives positions

    @property
    def header_provider(self) -> RequestHeaderProviderConfig:
        return parse_section(RequestHeaderProviderConfig, self.header_provider_config, SESSION_ENV)

    @property
    def params(self) -> ParamsConfig:
        return parse_section(ParamsConfig, self.params_config, SESSION_ENV)

    def to_env(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_env(cls) -> SessionSpec | None:
        raw = os.environ.get(SESSION_ENV)
        return msgspec.json.decode(raw, type=cls) if raw else None


def in_worker_process() -> bool:
    """True in a multiprocessing worker, which may exit without running atexit handlers."""
    import multiprocessing

    return multiprocessing.parent_process() is not None
