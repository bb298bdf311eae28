"""Install one request header provider into MLflow's registry, exactly once per process.

MLflow asks every registered provider for headers on every request and joins equal header
names with a space, so a provider registered twice (by us and by kedro-mlflow's hook, in
either order) would send ``Authorization: Bearer x Bearer x``. The registry's list is
therefore replaced by one that skips every other instance of the installed provider's class;
it filters when MLflow iterates, so registrations made after ours are covered too.

A node step that talks REST never imports MLflow, so there is no registry to install into.
If MLflow is imported later (an artifact upload, a kedro-mlflow dataset, the user's own
code), it loads its registry's entry points, and
:func:`kedro_vertex_hooks.mlflow_entry_point.provider_for_mlflow` hands it ours.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kedro_vertex_hooks.auth.errors import AuthError, describe_cause, redact_header_value
from kedro_vertex_hooks.auth.registry import resolve_provider_class
from kedro_vertex_hooks.auth.tokens import Token

logger = logging.getLogger(__name__)

OVERRIDING_ENV_VARS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME")


@dataclass(frozen=True)
class InstalledProvider:
    """What ``kedro vertex-hooks doctor`` prints about the provider; holds no token text."""

    name: str
    class_path: str
    audience: str | None
    in_context: bool
    headers: dict[str, str]  # header name -> redacted value
    token_expiry: datetime | None
    provider: Any = field(repr=False, compare=False)
    config_key: str = field(repr=False)

    @property
    def header_obtained(self) -> bool:
        return bool(self.headers)

    def describe(self) -> list[str]:
        """Human-readable lines, redacted."""
        lines = [f"request header provider: {self.name} ({self.class_path})"]
        lines.append(f"audience: {self.audience or '(not applicable)'}")
        if not self.in_context:
            lines.append("header: none (the provider says it is not in context)")
        for header, redacted in self.headers.items():
            lines.append(f"header: {header}: {redacted}")
        if self.token_expiry is not None:
            lines.append(f"token expires: {self.token_expiry.isoformat(timespec='seconds')}")
        return lines


_lock = threading.RLock()
_installed: InstalledProvider | None = None


def installed_provider() -> InstalledProvider | None:
    """The provider installed in this process, if any."""
    return _installed


def install_header_provider(config: Any, kedro_context: Any = None) -> InstalledProvider | None:
    """Build the configured provider, check it yields its header, register it once in MLflow.

    ``config`` is a ``RequestHeaderProviderConfig``. Returns None (and removes an earlier
    installation) when no provider is configured. Raises ``AuthError`` when the provider cannot
    be resolved, built, or asked for its header.
    """
    global _installed
    with _lock:
        if config.type is None:
            _unregister()
            return None
        key = _config_key(config)
        current = _installed
        if (
            current is not None
            and current.config_key == key
            and (
                not config.pass_context
                or kedro_context is None  # e.g. a forked worker: keep the parent's context
                or getattr(current.provider, "kedro_context", None) is kedro_context
            )
        ):
            _register(current.provider)
            return current
        _warn_about_overriding_env()
        installation = _build_and_check(config, kedro_context, key)
        _unregister()
        _register(installation.provider)
        _installed = installation
        logger.info(
            "MLflow request header provider %s installed: %s",
            installation.name,
            "; ".join(installation.describe()[1:]),
        )
        return installation


def ensure_single_registration(
    config: Any = None, kedro_context: Any = None
) -> InstalledProvider | None:
    """Cheaply re-assert that MLflow holds exactly one live instance of our provider.

    Call it before the pipeline and in ParallelRunner workers. With ``config`` (the same
    ``RequestHeaderProviderConfig``, e.g. rebuilt from JSON in a spawned worker) it installs the
    provider when this process has none yet or the configuration changed; otherwise it only
    repairs the registration and never asks the provider for a token.
    """
    with _lock:
        current = _installed
        if config is not None and (current is None or current.config_key != _config_key(config)):
            return install_header_provider(config, kedro_context)
        if current is not None:
            _register(current.provider)
        return current


def _config_key(config: Any) -> str:
    return json.dumps(
        {"type": config.type, "pass_context": config.pass_context, "init": config.init_kwargs},
        sort_keys=True,
        default=repr,
    )


def _build_and_check(config: Any, kedro_context: Any, key: str) -> InstalledProvider:
    """Instantiate the provider and ask it once for its header (fail fast, never leak)."""
    provider_class = resolve_provider_class(config.type)
    class_path = f"{provider_class.__module__}.{provider_class.__qualname__}"
    audience = config.init_kwargs.get("client_id") or config.init_kwargs.get("audience")
    what = _naming(config.type, class_path, audience)
    kwargs = dict(config.init_kwargs)
    if config.pass_context:
        kwargs["kedro_context"] = kedro_context
    try:
        provider = provider_class(**kwargs)
    except Exception as exc:
        raise AuthError(f"{what} cannot be created: {describe_cause(exc)}") from None
    audience = getattr(provider, "audience", None) or audience
    what = _naming(config.type, class_path, audience)
    headers: Any = {}
    try:
        active = bool(provider.in_context())
        if active:
            headers = provider.request_headers()
    except Exception as exc:
        raise AuthError(f"{what} could not produce its header: {describe_cause(exc)}") from None
    if not isinstance(headers, dict):
        raise AuthError(
            f"{what} returned {type(headers).__name__} from request_headers(), not a dict."
        )
    if active and not headers:
        raise AuthError(f"{what} is in context but returned no header.")
    secrets = tuple(str(value) for value in headers.values())
    return InstalledProvider(
        name=config.type,
        class_path=class_path,
        audience=audience,
        in_context=active,
        headers={str(name): redact_header_value(value) for name, value in headers.items()},
        token_expiry=_expiry_of(provider, secrets),
        provider=provider,
        config_key=key,
    )


def _naming(provider_type: str, class_path: str, audience: Any) -> str:
    where = f", audience {audience!r}" if audience else ""
    return f"Request header provider {provider_type!r} ({class_path}){where}"


def _expiry_of(provider: Any, header_values: tuple[str, ...]) -> datetime | None:
    expiry = getattr(provider, "token_expiry", None)
    if isinstance(expiry, datetime):
        return expiry
    for value in header_values:  # a custom provider's bearer JWT carries its own expiry
        token = Token.from_jwt(value.rpartition(" ")[2])
        if token.expires_at is not None:
            return token.expiry
    return None


def _warn_about_overriding_env() -> None:
    for name in OVERRIDING_ENV_VARS:
        if os.environ.get(name):
            logger.warning(
                "%s is set: MLflow lets it override the Authorization header of the request "
                "header provider. Unset it when the provider should authenticate.",
                name,
            )


class _SingleRegistrationList(list):
    """MLflow's provider list, iterated without duplicates of the installed provider."""

    def __iter__(self):  # type: ignore[override]
        installed = _installed.provider if _installed is not None else None
        configured = _installed.name if _installed is not None else None
        # A copy: another thread re-asserting the registration must not make MLflow's loop
        # see a shifted list (and our provider twice).
        for provider in list.copy(self):
            if provider is not installed and (
                type(provider) is type(installed) or _class_path(provider) == configured
            ):
                continue  # kedro-mlflow's instance built from the same mlflow.yml entry
            yield provider


def _class_path(provider: Any) -> str:
    return f"{type(provider).__module__}.{type(provider).__qualname__}"


def _provider_list() -> _SingleRegistrationList:
    from kedro_vertex_hooks.mlflow_compat import header_provider_list, set_header_provider_list

    providers = header_provider_list()
    if not isinstance(providers, _SingleRegistrationList):
        providers = _SingleRegistrationList(providers)
        set_header_provider_list(providers)
    return providers


def _register(provider: Any) -> None:
    """Leave exactly one entry for ``provider`` and none for other instances of its class."""
    if "mlflow" not in sys.modules:
        return  # nothing to install into yet: see mlflow_entry_point.provider_for_mlflow
    providers = _provider_list()
    current = list.copy(providers)
    wanted = [
        *(
            entry
            for entry in current
            if entry is not provider and type(entry) is not type(provider)
        ),
        provider,
    ]
    unchanged = len(current) == len(wanted) and all(map(operator.is_, current, wanted))
    if not unchanged:  # re-asserting a correct registration changes nothing
        providers[:] = wanted


def _unregister() -> None:
    global _installed
    if _installed is None:
        return
    if "mlflow" not in sys.modules:
        _installed = None
        return
    providers = _provider_list()
    providers[:] = [entry for entry in list.copy(providers) if entry is not _installed.provider]
    _installed = None
