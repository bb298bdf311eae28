"""Configuration: the hook's keyword options and the project's ``mlflow.yml`` / ``vertexai.yml``.

``mlflow.yml`` is kedro-mlflow's file; this package reads it and never writes it. Its schema
is restated here (same keys as kedro-mlflow 2.0.3) so that a typo fails with the key's name
instead of being ignored, whether or not kedro-mlflow is installed.

The models are ``msgspec`` structs rather than pydantic models: every node step of a pipeline
is a new process that builds them, and pydantic's model building and validators cost ~45 ms of
CPU per step there (issue 13), msgspec's ~1 ms after a ~7 ms import.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import msgspec

from kedro_vertex_hooks.errors import UserError
from kedro_vertex_hooks.kedro_compat import package_name
from kedro_vertex_hooks.naming import DEFAULT_SECRET_PATTERNS

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=msgspec.Struct)
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(UserError):
    """A configuration file or option is wrong; the message names the key and the file."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A section whose unknown keys are refused (a typo must not be silently ignored)."""


class RequestHeaderProviderConfig(_Strict):
    type: str | None = None
    pass_context: bool = False
    init_kwargs: dict[str, Any] = {}


class ServerConfig(_Strict):
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None
    credentials: str | None = None
    request_header_provider: RequestHeaderProviderConfig = msgspec.field(
        default_factory=RequestHeaderProviderConfig
    )


class DisableTrackingConfig(_Strict):
    pipelines: list[str] = []
    disable_autologging: bool = True


class CreateExperimentConfig(_Strict):
    artifact_location: str | None = None
    tags: dict[str, Any] | None = None


class ExperimentConfig(_Strict):
    name: str | None = None
    create_experiment_kwargs: CreateExperimentConfig = msgspec.field(
        default_factory=CreateExperimentConfig
    )
    restore_if_deleted: bool = True


class RunConfig(_Strict):
    id: str | None = None
    name: str | None = None
    nested: bool = True


class DictParamsConfig(_Strict):
    flatten: bool = True
    recursive: bool = True
    sep: str = "."


class ParamsConfig(_Strict):
    dict_params: DictParamsConfig = msgspec.field(default_factory=DictParamsConfig)
    long_params_strategy: Literal["fail", "truncate", "tag"] = "truncate"


class TrackingConfig(_Strict):
    disable_tracking: DisableTrackingConfig = msgspec.field(default_factory=DisableTrackingConfig)
    experiment: ExperimentConfig = msgspec.field(default_factory=ExperimentConfig)
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    params: ParamsConfig = msgspec.field(default_factory=ParamsConfig)


class UiConfig(_Strict):
    port: str | int = "5000"
    host: str = "127.0.0.1"


class MlflowYml(_Strict):
    """``conf/<env>/mlflow.yml``, kedro-mlflow's schema.

    Defaults differ from kedro-mlflow's where its default breaks this use: dict params are
    flattened (``model.a.b``) and over-long values truncated, unless the file says otherwise.
    """

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    tracking: TrackingConfig = msgspec.field(default_factory=TrackingConfig)
    ui: UiConfig = msgspec.field(default_factory=UiConfig)


class VertexaiMlflowConfig(_Strict):
    request_header_provider_params: dict[str, Any] = {}


class VertexaiRunConfig(msgspec.Struct, frozen=True, kw_only=True):
    """kedro-vertexai's other keys are not ours to check: they are accepted and not kept."""

    mlflow: VertexaiMlflowConfig | None = None


class VertexaiYml(msgspec.Struct, frozen=True, kw_only=True):
    """The part of kedro-vertexai's ``vertexai.yml`` this package reads."""

    run_config: VertexaiRunConfig | None = None


class HookOptions(_Strict):
    """Keyword options of ``MlflowRunHooks(...)``; all optional, documented in docs/reference.md."""

    on_param_conflict: Literal["tag", "fail"] = "tag"
    env_tags: dict[str, str] = {}
    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    artifact_datasets: tuple[str, ...] = ()
    metric_datasets: tuple[str, ...] = ()
    background_writes: bool = True
    strict: bool = False
    outage_budget_s: NonNegative = 60.0
    overload_budget_s: NonNegative | None = None
    on_undelivered: Literal["fail", "warn"] = "fail"
    run_untracked_if_unreachable: bool = False
    http_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    http_max_retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    run_search_settle_s: NonNegative = 1.0
    use_mlflow_client: bool = False

    @property
    def logged_datasets(self) -> frozenset[str]:
        """Datasets whose saves this package logs (artifacts or metrics)."""
        return frozenset(self.artifact_datasets) | frozenset(self.metric_datasets)


def parse_section(model: type[M], raw: Mapping[str, Any] | None, source: str) -> M:
    """Validate ``raw`` into ``model``; a wrong or unknown key raises ConfigError naming it.

    Lax like YAML users expect: ``"true"`` is a bool and ``"1.5"`` a float.
    """
    try:
        return msgspec.convert(dict(raw or {}), model, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"Invalid configuration in {source}: {_describe(exc, model)}") from None


def as_plain(section: msgspec.Struct) -> dict[str, Any]:
    """A section as plain data (JSON-ready), which :func:`parse_section` reads back."""
    return msgspec.to_builtins(section)


def parse_options(options: Mapping[str, Any]) -> HookOptions:
    """Validate ``MlflowRunHooks(**options)``; unknown or mistyped options raise ConfigError."""
    return parse_section(HookOptions, options, "MlflowRunHooks(...) in settings.py")


def parse_mlflow_yml(raw: Mapping[str, Any] | None, source: str) -> MlflowYml:
    return parse_section(MlflowYml, raw, source)


def parse_vertexai_yml(raw: Mapping[str, Any] | None, source: str) -> VertexaiYml:
    return parse_section(VertexaiYml, raw, source)


_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>.*)`$")
_JSON_WORDS = {"`object`": "a mapping", "`array`": "a list"}


def _describe(exc: msgspec.ValidationError, model: type) -> str:
    """msgspec's message in this package's words: the dotted key first, YAML's vocabulary."""
    match = _ERROR.match(str(exc))
    assert match is not None  # the pattern matches any text
    path = [part for part in re.split(r"[.\[\]]", match["path"] or "") if part]
    what = match["what"]
    unknown = _UNKNOWN.match(what)
    if unknown:
        return f"unknown key '{'.'.join([*path, unknown['key']])}'"
    choices = _choices(model, path)
    if choices:
        found = what.rpartition(" ")[2]
        what = "must be one of " + ", ".join(repr(c) for c in choices) + f", found {found}"
    for word, plain in _JSON_WORDS.items():
        what = what.replace(word, plain)
    key = ".".join(path) or "<top level>"
    return f"'{key}': {what[0].lower()}{what[1:]}"


def _choices(model: type, path: list[str]) -> tuple[Any, ...]:
    """The allowed values of the Literal field at ``path`` (empty if it is not one)."""
    annotation: Any = model
    for part in path:
        structs = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        struct = next((a for a in structs if issubclass(a, msgspec.Struct)), None)
        if struct is None:
            return ()
        annotation = get_type_hints(struct, include_extras=True).get(part)
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def _load(context: Any, name: str, patterns: list[str]) -> tuple[dict[str, Any], str]:
    """Load ``conf/<env>/<name>*.yml`` through the project's own config loader."""
    from kedro.config import MissingConfigException

    loader = context.config_loader
    source = f"conf/{{base,{context.env or 'local'}}}/{name}.yml"
    if name not in loader.config_patterns:
        loader.config_patterns.update({name: patterns})
    try:
        raw = loader[name]
    except MissingConfigException:
        return {}, source
    except Exception as exc:  # YAML syntax errors and the like, from OmegaConf/yaml
        raise ConfigError(f"Cannot read {source} (a YAML mapping is expected): {exc}") from None
    if raw is None:
        return {}, source
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source} must hold a mapping, found {type(raw).__name__}")
    return dict(raw), source


class ProjectConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything this package reads from a Kedro project, resolved once per process."""

    mlflow: MlflowYml
    vertexai: VertexaiYml
    tracking_uri: str
    tracking_uri_source: str
    experiment_name: str
    project_path: Path

    @property
    def header_provider(self) -> RequestHeaderProviderConfig:
        """``server.request_header_provider`` with vertexai.yml's params merged in."""
        provider = self.mlflow.server.request_header_provider
        extra = {}
        if self.vertexai.run_config and self.vertexai.run_config.mlflow:
            extra = self.vertexai.run_config.mlflow.request_header_provider_params
        if not extra:
            return provider
        return msgspec.structs.replace(provider, init_kwargs={**provider.init_kwargs, **extra})


def ignored_settings(mlflow_yml: MlflowYml) -> list[str]:
    """kedro-mlflow keys set to something other than their default that this package does not
    use (the run comes from the orchestrator, not from ``tracking.run``): said, not silent."""
    defaults = MlflowYml()
    pairs = [
        ("server.mlflow_registry_uri", mlflow_yml.server.mlflow_registry_uri,
         defaults.server.mlflow_registry_uri),
        ("tracking.disable_tracking.disable_autologging",
         mlflow_yml.tracking.disable_tracking.disable_autologging,
         defaults.tracking.disable_tracking.disable_autologging),
        ("tracking.experiment.create_experiment_kwargs",
         mlflow_yml.tracking.experiment.create_experiment_kwargs,
         defaults.tracking.experiment.create_experiment_kwargs),
        ("tracking.experiment.restore_if_deleted",
         mlflow_yml.tracking.experiment.restore_if_deleted,
         defaults.tracking.experiment.restore_if_deleted),
        ("tracking.run", mlflow_yml.tracking.run, defaults.tracking.run),
        ("ui", mlflow_yml.ui, defaults.ui),
    ]  # fmt: skip
    return [key for key, value, default in pairs if value != default]


def default_tracking_uri(project_path: Path) -> str:
    """The embedded store: a sqlite file in the project."""
    return f"sqlite:///{(project_path / 'mlflow.db').as_posix()}"


def load_project_config(context: Any) -> ProjectConfig:
    """Read mlflow.yml (and vertexai.yml, when a request header provider is configured) and
    resolve the tracking URI and experiment."""
    raw_mlflow, mlflow_source = _load(context, "mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
    mlflow_yml = parse_mlflow_yml(raw_mlflow, mlflow_source)
    vertexai_yml = VertexaiYml()
    if mlflow_yml.server.request_header_provider.type:
        # Only a configured provider takes vertexai.yml's params: reading the file costs a
        # step ~5-10 ms of CPU (Kedro's loader globs each pattern in each environment).
        raw_vertex, vertex_source = _load(context, "vertexai", ["vertexai*", "vertexai*/**"])
        vertexai_yml = parse_vertexai_yml(raw_vertex, vertex_source)
    for key in ignored_settings(mlflow_yml):
        logger.warning(
            "%s: '%s' is set, but kedro-vertex-hooks does not use it (kedro-mlflow does, when "
            "its hook runs); the run comes from MLFLOW_RUN_ID / KEDRO_CONFIG_RUN_ID.",
            mlflow_source,
            key,
        )
    if mlflow_yml.server.credentials:
        export_credentials(context, mlflow_yml.server.credentials, mlflow_source)
    project_path = Path(context.project_path)
    tracking_uri, source = resolve_tracking_uri(mlflow_yml, project_path, mlflow_source)
    experiment = mlflow_yml.tracking.experiment.name or package_name(context, project_path)
    return ProjectConfig(
        mlflow=mlflow_yml,
        vertexai=vertexai_yml,
        tracking_uri=tracking_uri,
        tracking_uri_source=source,
        experiment_name=experiment,
        project_path=project_path,
    )


def resolve_tracking_uri(
    mlflow_yml: MlflowYml, project_path: Path, mlflow_source: str
) -> tuple[str, str]:
    """mlflow.yml, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    configured = mlflow_yml.server.mlflow_tracking_uri
    if configured:
        if "://" not in configured and not configured.startswith("databricks"):
            # kedro-mlflow reads a bare path as relative to the project
            path = Path(configured)
            path = path if path.is_absolute() else project_path / path
            return path.resolve().as_uri(), f"{mlflow_source} server.mlflow_tracking_uri"
        return configured, f"{mlflow_source} server.mlflow_tracking_uri"
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env, "environment variable MLFLOW_TRACKING_URI"
    return default_tracking_uri(project_path), "default (sqlite store in the project)"


def export_credentials(context: Any, name: str, mlflow_source: str) -> None:
    """Put the ``credentials.yml`` entry that ``server.credentials`` names in the environment,
    as kedro-mlflow does (e.g. ``MLFLOW_TRACKING_TOKEN``), before the URI is resolved."""
    from kedro.config import MissingConfigException

    source = f"conf/{{base,{context.env or 'local'}}}/credentials.yml"
    try:
        entries = context.config_loader["credentials"] or {}
    except MissingConfigException:
        entries = {}
    entry = entries.get(name) if isinstance(entries, Mapping) else None
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{mlflow_source} server.credentials names {name!r}, but {source} has no mapping "
            f"under that key. Add it (environment variable names and their values) or remove "
            f"server.credentials."
        )
    for key, value in entry.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(
                f"{source}: '{name}.{key}' must be a single value (it becomes environment "
                f"variable {key})."
            )
        os.environ[str(key)] = str(value)
