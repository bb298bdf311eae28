"""Names and values as MLflow accepts them: the one place keys and values are made legal.

Every tag, param and metric key this package writes goes through :func:`legal_key` or
:func:`node_key`, so a node name is made legal the same way in every key it appears in.
Pure functions only: no MLflow import, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

# MLflow's limits (mlflow/utils/validation.py), restated so that this module stays import-free.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

# Tag and metric names this package writes (documented in docs/reference.md).
TAG_LATEST_NODE = "kedro.latest_node"
TAG_FAILED_NODE = "kedro.failed_node"
TAG_ERROR = "kedro.error"
TAG_PIPELINE = "kedro.pipeline"
# Where a step learns its run: the run id, else the orchestrator's job id and name.
ENV_RUN_ID = "MLFLOW_RUN_ID"
ENV_JOB_ID = "KEDRO_CONFIG_RUN_ID"
ENV_JOB_NAME = "KEDRO_CONFIG_JOB_NAME"
DEFAULT_PIPELINE = "__default__"  # Kedro's name for the pipeline `kedro run` runs
TAG_NODE_HOST = "kedro.node_host"
TAG_NODE_ERROR = "kedro.node_error"
TAG_PARAM_CONFLICT = "kedro.param_conflict"
TAG_LONG_PARAM = "kedro.long_param"
TAG_JOB_ID = "vertexai_run_id"
TAG_JOB_NAME = "vertexai_job_name"
TAG_RUN_NOTE = "mlflow.note.content"
# The per-node record (records.py): one point per node, at step = the node's position.
METRIC_NODE_STARTED = "kedro.node_started_at"  # Unix time, seconds
METRIC_NODE_STARTUP = "kedro.node_startup_s"  # from its process's start to the node's
METRIC_NODE_DURATION = "kedro.node_duration_s"
METRIC_NODE_PEAK_RSS = "kedro.node_peak_rss_mb"
METRIC_NODE_COMPLETED = "kedro.node_completed"  # 1 completed, 0 failed
RECORD_METRICS = (
    METRIC_NODE_STARTED,
    METRIC_NODE_STARTUP,
    METRIC_NODE_DURATION,
    METRIC_NODE_PEAK_RSS,
    METRIC_NODE_COMPLETED,
)

NODE_RUNNING = "running"
NODE_COMPLETED = "completed"
NODE_FAILED = "failed"
NODE_LOST = "lost"

# MLflow run statuses this package sets.
RUN_RUNNING, RUN_FINISHED, RUN_FAILED, RUN_KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

SECRET_MASK = "***"
DEFAULT_SECRET_PATTERNS = ("password", "secret", "token", "api_key", "apikey", "credentials")

_ILLEGAL_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_REPEATED_SLASHES = re.compile(r"/{2,}")
_HASH_LENGTH = 8


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]


def legal_key(raw: str, max_length: int = MAX_KEY_LENGTH) -> str:
    """Return ``raw`` as a key MLflow accepts; a legal key comes back unchanged.

    Characters outside ``[/\\w.\\- :]`` become ``_``; repeated slashes collapse and leading or
    trailing slashes are dropped; ``..`` becomes ``__``. A key longer than ``max_length`` keeps
    its start and ends with ``-`` and a hash of the original, so distinct long keys stay
    distinct.
    """
    key = _ILLEGAL_KEY_CHARS.sub("_", raw)
    key = _REPEATED_SLASHES.sub("/", key).strip("/")
    key = key.replace("..", "__") or "_"
    if len(key) > max_length:
        key = key[: max_length - _HASH_LENGTH - 1] + "-" + _short_hash(raw)
    return key


def node_key(prefix: str, node_name: str) -> str:
    """Key ``<prefix>.<node>`` for a per-node tag or metric, legal and within 250 chars."""
    return prefix + "." + legal_key(node_name, MAX_KEY_LENGTH - len(prefix) - 1)


def trim(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, marking the cut so that nobody mistakes it."""
    if len(value) <= limit:
        return value
    marker = "...[truncated]"
    return value[: limit - len(marker)] + marker


def clean_text(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (undecodable bytes) become U+FFFD."""
    if not _has_surrogates(text):
        return text
    return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


def error_text(error: BaseException) -> str:
    """``<ExceptionType>: <message>`` as tag ``kedro.error`` shows it, within MLflow's limit."""
    try:
        message = str(error)
    except Exception:
        message = "<message unavailable>"
    return trim(clean_text(f"{type(error).__name__}: {message}"), MAX_TAG_VALUE_LENGTH)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def value_to_text(value: Any) -> str:
    """A parameter value as the string MLflow stores, for any Python object, never raising.

    Plain data gives ``str(value)`` (what ``mlflow.log_param`` stores, so kedro-mlflow and this
    package agree); sets are sorted; bytes are decoded; dataclasses and pydantic models are
    shown as dicts; numpy scalars as numbers; an object whose ``repr`` raises is named by type.
    """
    try:
        return clean_text(_to_text(value))
    except Exception:  # a user's broken __repr__/__str__ must not fail the node
        return f"<unrepresentable {type(value).__name__}>"


def _to_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return str(sorted((plain_data(v) for v in value), key=repr))
    return str(plain_data(value))


def plain_data(value: Any) -> Any:
    """Convert library objects (numpy, pydantic, dataclasses) into plain Python data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        return model_dump()
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist) and type(value).__module__.startswith("numpy"):
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted((plain_data(v) for v in value), key=repr)
    return value


def flatten(params: Mapping[str, Any], sep: str = ".", recursive: bool = True) -> dict[str, Any]:
    """Flatten nested dicts: ``{"model": {"a": {"b": 1}}}`` gives ``{"model.a.b": 1}``.

    With ``recursive=False`` only the first level is expanded (kedro-mlflow's option).
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            inner = flatten(value, sep, recursive) if recursive else dict(value)
            for inner_key, inner_value in inner.items():
                flat[f"{key}{sep}{inner_key}"] = inner_value
        else:
            flat[str(key)] = value
    return flat


def is_secret_key(key: str, patterns: Iterable[str]) -> bool:
    """True when a parameter key looks like it holds a secret (case-insensitive substring)."""
    lowered = key.lower()
    return any(pattern.lower() in lowered for pattern in patterns)


def node_params(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter inputs of a node: ``params:<name>`` as ``<name>``, ``parameters`` as is."""
    found: dict[str, Any] = {}
    for name, value in inputs.items():
        if name.startswith("params:"):
            found[name[len("params:") :]] = value
        elif name == "parameters":
            found[name] = value
    return found
