"""Base class for request header providers that may need the Kedro context.

With kedro-mlflow installed it subclasses MLflow's ``RequestHeaderProvider``, so that
kedro-mlflow (which checks ``issubclass``) accepts the same ``mlflow.yml`` entry; kedro-mlflow
imports MLflow in every process anyway. Without it the base is a plain class: a node step that
talks REST then authenticates without importing MLflow (0.6-1 s of its start-up).
"""

from __future__ import annotations

import importlib.util
from typing import Any


def _provider_base() -> type:
    if importlib.util.find_spec("kedro_mlflow") is None:
        return object
    from mlflow.tracking.request_header.abstract_request_header_provider import (
        RequestHeaderProvider,
    )

    return RequestHeaderProvider


class RequestHeaderProviderWithKedroContext(_provider_base()):  # type: ignore[misc]
    """Subclasses implement ``in_context()`` and ``request_headers()``.

    ``params`` holds the ``init_kwargs`` of ``mlflow.yml`` (plus vertexai.yml's
    ``request_header_provider_params``); ``kedro_context`` is set when ``pass_context`` is true.
    """

    def __init__(self, kedro_context: Any = None, **params: Any) -> None:
        self.kedro_context = kedro_context
        self.params = params

    def __repr__(self) -> str:
        # Parameter values may be secrets: show names only.
        names = ", ".join(sorted(self.params))
        return f"{type(self).__name__}(params=[{names}])"
