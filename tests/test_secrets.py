"""No token anywhere: sample_project run in four containers through the IAP-like proxy with the
gcp-oauth provider and short-lived tokens from the fake metadata server, one node failing,
everything logged at DEBUG. Then every token the proxy accepted is searched for in what the
pipeline produced: log output, exception texts, tags, params, metric names, artifacts, the
project's files and the tracking server's log. Secret-looking params are masked too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kedro_vertex_hooks.naming import TAG_ERROR, TAG_FAILED_NODE
from tests.support.auth_stack import AUDIENCE, AuthStack, google_free_env
from tests.support.generated_project import write_logging_config
from tests.support.project import REPO, SAMPLE_STEPS, Project

ALL_NODES = [name for step in SAMPLE_STEPS for name in step]
GATE = ALL_NODES.index("quality_gate")
# Four containers: two groups of nodes, the gate failing once, then the gate and the last node.
STEPS = [
    (ALL_NODES[:5], ()),
    (ALL_NODES[5:GATE], ()),
    (["quality_gate"], ("--params", "failure.fail=true")),
    (ALL_NODES[GATE:], ()),
]


@pytest.fixture(scope="module")
def stack(mlflow_server) -> Iterator[AuthStack]:
    yield from AuthStack.serve(mlflow_server.uri)


def token_fragments(tokens: set[str]) -> set[str]:
    """Each token whole, and its payload and signature alone (a cut token still leaks)."""
    fragments = set(tokens)
    for token in tokens:
        _, payload, signature = token.split(".")
        fragments.update({payload, signature})
    return fragments


def leaks(text: str, fragments: set[str]) -> list[str]:
    return [fragment[:12] + "..." for fragment in fragments if fragment in text]


@pytest.mark.timeout(600)
def test_no_token_reaches_logs_tags_params_artifacts_or_errors(
    stack: AuthStack, mlflow_server, client, tmp_path: Path
):
    stack.reset(token_lifetime_s=3)  # several tokens over the pipeline, refreshed mid-run
    project = Project.copy(tmp_path / "project")
    provider = {"type": "gcp-oauth", "init_kwargs": {"client_id": AUDIENCE}}
    server = {"mlflow_tracking_uri": stack.proxy.url, "request_header_provider": provider}
    (project.root / "conf" / "local" / "mlflow.yml").write_text(yaml.safe_dump({"server": server}))
    run_id = client.create_run(client.create_experiment("secrets")).info.run_id
    env = google_free_env(
        tmp_path,
        PYTHONPATH=str(REPO),
        KEDRO_LOGGING_CONFIG=write_logging_config(tmp_path / "logging.yml", "DEBUG"),
        MLFLOW_RUN_ID=run_id,
        **stack.google.metadata_env(),
    )

    outputs: list[str] = []
    for nodes, extra in STEPS:
        result = project.run_nodes(nodes, env, *extra)
        outputs.append(result.stdout + result.stderr)
        assert (result.returncode == 0) != ("failure.fail=true" in extra), outputs[-1][-4000:]

    tokens = set(stack.proxy.tokens_seen)
    assert len(tokens) >= 3  # really authenticated, with refreshes
    assert stack.proxy.rejections == []
    fragments = token_fragments(tokens)

    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILED_NODE] == "quality_gate"
    assert run.data.params["report.api_token"] == "***"
    assert "not-a-real-token" not in repr(run.data)
    assert "DEBUG" in outputs[0]  # the scan covers debug logging

    artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    artifact_files = [path for path in artifacts.rglob("*") if path.is_file()]
    assert artifact_files  # the report dataset is logged as an artifact
    project_files = [path for path in project.root.rglob("*") if path.is_file()]
    places = {
        "log output and exception texts": "\n".join(outputs),
        "tags": repr(run.data.tags),
        "params": repr(run.data.params),
        "metric names": repr(sorted(run.data.metrics)),
        "artifacts": "\n".join(p.read_bytes().decode("utf-8", "replace") for p in artifact_files),
        "project files": "\n".join(
            p.read_bytes().decode("utf-8", "replace") for p in project_files
        ),
        "tracking server log": (mlflow_server.workdir / "server.log").read_text(errors="replace"),
    }
    found = {place: leaks(text, fragments) for place, text in places.items()}
    assert found == {place: [] for place in places}
    assert run.data.tags[TAG_ERROR].startswith("ValueError: quality gate rejected the model")
