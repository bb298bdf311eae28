"""Resolve ``request_header_provider.type``: an entry-point name or a dotted class path.

Third-party packages add providers to the entry-point group
``kedro_vertex_hooks.request_header_providers``; the built-ins ``gcp-iam`` and ``gcp-oauth``
are registered there by this package's own pyproject.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from kedro_vertex_hooks.auth.errors import AuthError, describe_cause
from kedro_vertex_hooks.kedro_vertexai_compat import equivalent_provider

ENTRY_POINT_GROUP = "kedro_vertex_hooks.request_header_providers"


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, [])
        if all(known.value != entry_point.value for known in found[entry_point.name]):
            found[entry_point.name].append(entry_point)
    return found


def registered_provider_names() -> list[str]:
    """Names usable as ``type`` in ``mlflow.yml``, sorted."""
    return sorted(_entry_points())


def resolve_provider_class(provider_type: str) -> type:
    """The provider class for an entry-point name or a ``package.module.Class`` path.

    kedro-vertexai's Google providers resolve to this package's classes of the same names.
    """
    provider_type = equivalent_provider(provider_type) or provider_type
    candidates = _entry_points().get(provider_type)
    if candidates:
        if len(candidates) > 1:
            values = ", ".join(candidate.value for candidate in candidates)
            raise AuthError(
                f"Request header provider name {provider_type!r} is registered more than once "
                f"in entry-point group {ENTRY_POINT_GROUP!r} ({values}); use a dotted class path."
            )
        try:
            provider_class = candidates[0].load()
        except Exception as exc:
            raise AuthError(
                f"Request header provider {provider_type!r} ({candidates[0].value}) cannot be "
                f"loaded: {describe_cause(exc)}"
            ) from None
    elif "." in provider_type:
        provider_class = _import_dotted(provider_type)
    else:
        raise AuthError(_unknown(provider_type))
    missing = [
        method
        for method in ("in_context", "request_headers")
        if not callable(getattr(provider_class, method, None))
    ]
    if not isinstance(provider_class, type) or missing:
        raise AuthError(
            f"Request header provider {provider_type!r} resolves to {provider_class!r}, which is "
            f"not a class with in_context() and request_headers()."
        )
    return provider_class


def _import_dotted(path: str) -> type:
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and module_name.startswith(missing):  # the path itself is wrong
            raise AuthError(_unknown(path)) from None
        raise AuthError(
            f"Importing {module_name} for provider {path!r} failed: {describe_cause(exc)}"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise AuthError(_unknown(path)) from None


def _unknown(provider_type: str) -> str:
    names = ", ".join(registered_provider_names()) or "(none)"
    return (
        f"Unknown request header provider type {provider_type!r} in "
        f"server.request_header_provider.type. Registered providers (entry-point group "
        f"{ENTRY_POINT_GROUP!r}): {names}; or give a dotted class path such as "
        f"'my_package.auth.MyHeaderProvider'."
    )
