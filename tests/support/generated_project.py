"""A small Kedro project written by a test into its tmp_path: exactly the nodes, parameters
and config files the test needs, run with real `kedro run` processes like sample_project."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from tests.support.project import Project

PACKAGE = "tiny_project"

_PYPROJECT = f"""
[project]
name = "{PACKAGE}"
version = "0.1.0"

[tool.kedro]
package_name = "{PACKAGE}"
project_name = "{PACKAGE}"
kedro_init_version = "1.7.0"
source_dir = "src"
"""

_PIPELINE_REGISTRY = """
from kedro.pipeline import Pipeline

from tiny_project.nodes import create_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    return {"__default__": create_pipeline()}
"""

_SETTINGS = """
from kedro_vertex_hooks import MlflowRunHooks

HOOKS = (MlflowRunHooks({options}),{extra_hooks})
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
"""


def generate_project(
    root: Path,
    nodes_module: str,
    *,
    hook_options: str = "",
    extra_hooks: str = "",
    settings_prelude: str = "",
    conf: Mapping[str, str] | None = None,
    python: Path | None = None,
) -> Project:
    """Write a project whose ``tiny_project.nodes.create_pipeline()`` is the pipeline.

    ``hook_options`` is the argument text of ``MlflowRunHooks(...)``; ``extra_hooks`` more
    hook instances (text) defined in ``settings_prelude``; ``conf`` maps paths under
    ``conf/`` (``"base/parameters.yml"``) to their text; ``python`` is the step image's
    interpreter (the client-only one unless given).
    """
    package = root / "src" / PACKAGE
    settings = _SETTINGS.format(
        options=hook_options, extra_hooks=f" {extra_hooks}" if extra_hooks else ""
    )
    files = {
        root / "pyproject.toml": _PYPROJECT,
        package / "__init__.py": '__version__ = "0.1.0"\n',
        package / "pipeline_registry.py": _PIPELINE_REGISTRY,
        package / "nodes.py": nodes_module,
        package / "settings.py": settings_prelude + settings,
        root / "conf" / "local" / ".gitkeep": "",
        root / "conf" / "base" / "parameters.yml": "{}\n",
        root / "conf" / "base" / "catalog.yml": "{}\n",
    }
    for relative, text in (conf or {}).items():
        files[root / "conf" / relative] = text
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return Project(root, python)


def write_logging_config(path: Path, level: str = "INFO") -> str:
    """A Kedro logging config (``KEDRO_LOGGING_CONFIG``) printing one plain line per record:
    Kedro's rich handler wraps long messages, which tests then cannot find."""
    path.write_text(
        textwrap.dedent(
            f"""
            version: 1
            disable_existing_loggers: false
            formatters:
              plain: {{format: "%(levelname)s %(name)s: %(message)s"}}
            handlers:
              console: {{class: logging.StreamHandler, formatter: plain, stream: ext://sys.stdout}}
            root: {{level: {level}, handlers: [console]}}
            """
        )
    )
    return str(path)
