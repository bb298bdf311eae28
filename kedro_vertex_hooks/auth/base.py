"""Base class for request header providers that may need the Kedro context.

It subclasses MLflow's ``RequestHeaderProvider`` so that kedro-mlflow (which checks
``issubclass``) accepts the same ``mlflow.yml`` entry. Importing this module imports MLflow;
``kedro_vertex_hooks.auth`` only imports it when the class is asked for.
"""

from __future__ import annotations

from typing import Any

from mlflow.tracking.request_header.abstract_request_header_provider import (
    RequestHeaderProvider,
)


class RequestHeaderProviderWithKedroContext(RequestHeaderProvider):
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
