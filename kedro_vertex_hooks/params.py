"""A node's parameter inputs turned into MLflow params (and tags for values kept as tags).

Pure: flattening, legal keys, string values, secret masking and the long-value policy, all
decided here so that every process of a pipeline logs the same keys and values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from kedro_vertex_hooks.config import ParamsConfig
from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.naming import (
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    SECRET_MASK,
    TAG_LONG_PARAM,
    flatten,
    is_secret_key,
    legal_key,
    node_key,
    node_params,
    plain_data,
    trim,
    value_to_text,
)

logger = logging.getLogger(__name__)


class LongParamError(UserError, ValueError):
    """A value over MLflow's limit while ``long_params_strategy: fail`` is configured."""


class PreparedParams(msgspec.Struct):
    params: dict[str, str] = msgspec.field(default_factory=dict)
    tags: dict[str, str] = msgspec.field(default_factory=dict)


def prepare_params(
    inputs: Mapping[str, Any], config: ParamsConfig, secret_patterns: Iterable[str]
) -> PreparedParams:
    """Params to log for a node's ``inputs`` (only ``params:*`` and ``parameters`` count).

    Long values follow ``long_params_strategy``: ``truncate`` (default) cuts them to MLflow's
    6000 characters with a visible marker; ``tag`` stores the whole value (up to 8000) as tag
    ``kedro.long_param.<key>`` and logs a truncated param; ``fail`` raises.
    """
    raw = node_params(inputs)
    dict_config = config.dict_params
    if dict_config.flatten:
        raw = flatten(raw, sep=dict_config.sep, recursive=dict_config.recursive)
    patterns = tuple(secret_patterns)
    prepared = PreparedParams()
    for raw_key, raw_value in raw.items():
        key = legal_key(str(raw_key))
        if key != raw_key:
            logger.debug("Parameter key %r logged as %r (MLflow key rules)", raw_key, key)
        if is_secret_key(key, patterns):
            value = SECRET_MASK
        else:
            value = value_to_text(without_secrets(raw_value, patterns))
        if len(value) > MAX_PARAM_VALUE_LENGTH:
            value = _long_value(key, value, config.long_params_strategy, prepared)
        prepared.params[key] = value
    return prepared


def without_secrets(value: Any, patterns: tuple[str, ...]) -> Any:
    """``value`` with entries under secret-looking keys masked, at any depth.

    Flattening only reaches dicts: a list of dicts, an unflattened dict, a dataclass or a
    pydantic model would otherwise carry a password into the logged text. Returned as is
    when it holds no secret, so its text stays what ``str(value)`` gives.
    """
    try:
        plain = plain_data(value)
    except Exception:  # a user's broken object: value_to_text names it by its type
        return value
    if isinstance(plain, Mapping):
        masked: Any = {
            key: SECRET_MASK if is_secret_key(str(key), patterns) else without_secrets(v, patterns)
            for key, v in plain.items()
        }
        changed = any(masked[key] is not v for key, v in plain.items())
    elif isinstance(plain, (list, tuple)):
        masked = [without_secrets(v, patterns) for v in plain]
        changed = any(new is not old for new, old in zip(masked, plain, strict=True))
        masked = masked if isinstance(plain, list) else tuple(masked)
    else:
        return value
    return masked if changed else value


def _long_value(key: str, value: str, strategy: str, prepared: PreparedParams) -> str:
    if strategy == "fail":
        raise LongParamError(
            f"Parameter '{key}' is {len(value)} characters long, over MLflow's limit of "
            f"{MAX_PARAM_VALUE_LENGTH}. Set tracking.params.long_params_strategy to 'truncate' "
            "or 'tag' in mlflow.yml to log it anyway."
        )
    logger.warning(
        "Parameter '%s' is %d characters long (MLflow keeps %d): %s",
        key,
        len(value),
        MAX_PARAM_VALUE_LENGTH,
        "truncated" if strategy == "truncate" else f"full value in tag {TAG_LONG_PARAM}.{key}",
    )
    if strategy == "tag":
        prepared.tags[node_key(TAG_LONG_PARAM, key)] = trim(value, MAX_TAG_VALUE_LENGTH)
    return trim(value, MAX_PARAM_VALUE_LENGTH)
