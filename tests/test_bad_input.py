"""Bad input end to end: a small generated Kedro project run with `kedro run` against the
session's MLflow server. Broken configuration fails the step before any node with a message
naming the file and the key; odd parameters, node names and text are logged, never fatal.

Kedro 1.7 itself refuses node names outside letters, digits, ``-``, ``_`` and ``.``; of those,
MLflow still rejects ``..`` in a key, and any name over 250 characters."""

from __future__ import annotations

import subprocess

import pytest

from kedro_vertex_hooks.naming import (
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_NODE_ERROR,
    TAG_NODE_HOST,
    legal_key,
    node_key,
)
from tests.support.generated_project import generate_project
from tests.support.odd_values import EXPECTED_TEXT
from tests.support.project import FULL_PYTHON, REPO, Project, base_env
from tests.support.tracked import node_statuses

NODES = """
import os

from kedro.pipeline import Pipeline, node


def consume(odd, plain):
    return len(odd) + len(plain)


def fail(odd):
    raise ValueError("bad \\udcff byte " + "x" * 9000)


def create_pipeline():
    if os.environ.get("TINY_PIPELINE") == "failing":
        return Pipeline([node(fail, "params:odd", "nothing", name="fails.badly")])
    return Pipeline(
        [
            node(consume, ["params:odd", "params:plain"], "total", name="clean..data-v2"),
            node(consume, ["params:odd", "params:plain"], "total_2", name=LONG_NODE_NAME),
        ]
    )


LONG_NODE_NAME = "n" * 300
"""
ODD_VALUES_HOOK = """
from kedro.framework.hooks import hook_impl

from tests.support.odd_values import odd_values


class OddParameterValues:
    \"\"\"Puts values YAML cannot express into the catalog, as a project hook might.\"\"\"

    @hook_impl
    def after_catalog_created(self, catalog):
        catalog["params:odd"] = odd_values()

"""
PARAMETERS = """
odd: {}
plain:
  db: {host: localhost, password: hunter2}
  "spaces and (parens)": 1
"""


WITH_PROVIDER = "server: {request_header_provider: {type: gcp-oauth}}"


def make_project(tmp_path, **files: str) -> Project:
    conf = {"base/parameters.yml": PARAMETERS}
    conf.update({f"base/{name}.yml": text for name, text in files.items()})
    return generate_project(
        tmp_path / "project",
        NODES,
        settings_prelude=ODD_VALUES_HOOK,
        python=FULL_PYTHON,  # the odd values are numpy's and pydantic's
        extra_hooks="OddParameterValues(),",
        conf=conf,
    )


def env_for(mlflow_server, **extra: str) -> dict[str, str]:
    """A step's environment; the repository on PYTHONPATH for the hook's odd values."""
    return base_env(MLFLOW_TRACKING_URI=mlflow_server.uri, PYTHONPATH=str(REPO), **extra)


def new_run(client, name: str) -> str:
    return client.create_run(client.create_experiment(name)).info.run_id


def output_of(result) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        (
            "mlflow",
            "server: {mlflow_tracking_url: http://127.0.0.1:1}",
            "unknown key 'server.mlflow_tracking_url'",
        ),
        (
            "mlflow",
            "tracking: {params: {long_params_strategy: shorten}}",
            "'tracking.params.long_params_strategy': must be one of 'fail', 'truncate', 'tag', "
            "found 'shorten'",
        ),
        (
            "mlflow",
            "tracking: {experiment: {name: [a, b]}}",
            "'tracking.experiment.name': expected `str | null`, got a list",
        ),
        (
            "mlflow",
            "server: {mlflow_tracking_uri: [unclosed",
            "Cannot read conf/{base,local}/mlflow",
        ),
        (
            "mlflow",
            "- a list\n- not a mapping\n",
            "Cannot read conf/{base,local}/mlflow.yml (a YAML mapping is expected)",
        ),
        (
            "vertexai",
            "run_config: {mlflow: {request_header_provider_params: [1, 2]}}",
            "'run_config.mlflow.request_header_provider_params': expected a mapping, got a list",
        ),
        (
            "vertexai",
            "run_config: {mlflow: {request_header_provider_param: {}}}",
            "unknown key 'run_config.mlflow.request_header_provider_param'",
        ),
        (
            "mlflow",
            "server: {credentials: mlflow_creds}",
            "server.credentials names 'mlflow_creds', but conf/{base,local}/credentials.yml has "
            "no mapping under that key",
        ),
    ],
    ids=[
        "unknown-key",
        "bad-choice",
        "wrong-type",
        "yaml-syntax",
        "not-a-mapping",
        "vertexai-wrong-type",
        "vertexai-unknown-key",
        "credentials-missing",
    ],
)
def test_broken_configuration_fails_before_any_node_naming_file_and_key(
    client, mlflow_server, tmp_path, file, text, expected
):
    # vertexai.yml is read for its request header provider params: with a provider only
    files = {file: text} if file == "mlflow" else {file: text, "mlflow": WITH_PROVIDER}
    project = make_project(tmp_path, **files)
    run_id = new_run(client, f"bad-config-{tmp_path.name}")
    env = env_for(mlflow_server, MLFLOW_RUN_ID=run_id)
    result = project.run(["run"], env)
    output = output_of(result)
    assert result.returncode != 0
    assert expected in output
    assert f"conf/{{base,local}}/{file}.yml" in output
    assert "Running node" not in output
    assert "Traceback" not in output  # Kedro's CLI prints one line: Error: ...
    assert client.get_run(run_id).data.params == {}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("outage_budget=5", "unknown key 'outage_budget'"),
        ("outage_budget_s=-1", "'outage_budget_s': expected `float` >= 0.0"),
        (
            "on_param_conflict='ignore'",
            "'on_param_conflict': must be one of 'tag', 'fail', found 'ignore'",
        ),
    ],
)
def test_mistyped_hook_options_fail_naming_the_option(tmp_path, mlflow_server, options, expected):
    project = generate_project(tmp_path / "project", NODES, hook_options=options)
    result = project.run(["run"], env_for(mlflow_server))
    output = output_of(result)
    assert result.returncode != 0
    assert "MlflowRunHooks(...) in settings.py" in output
    assert expected in output
    assert "Running node" not in output


def test_odd_parameters_and_node_names_are_logged_never_fatal(client, mlflow_server, tmp_path):
    from mlflow.utils.validation import _validate_param_name

    project = make_project(tmp_path)
    run_id = new_run(client, "odd-input")
    env = env_for(mlflow_server, MLFLOW_RUN_ID=run_id)
    result = project.run(["run"], env)
    output = output_of(result)
    assert result.returncode == 0, output[-4000:]
    assert "Parameter 'odd.long_value' is 7000 characters long" in " ".join(output.split())

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    for raw_key, text in EXPECTED_TEXT.items():
        assert params[legal_key(f"odd.{raw_key}")] == text, raw_key
    assert params[legal_key("odd." + "k" * 300)] == "3"
    assert len(params["odd.long_value"]) == MAX_PARAM_VALUE_LENGTH
    assert params["plain.db.password"] == "***"
    assert params["plain.spaces and _parens_"] == "1"
    for key in params:
        _validate_param_name(key)
        assert len(key) <= MAX_KEY_LENGTH

    order = ["clean..data-v2", "n" * 300]  # Kedro's order: independent nodes, by name
    assert node_statuses(client, run_id, order) == dict.fromkeys(order, "completed")
    # Completed nodes add no key of their own to the run (their record is metric points).
    assert not [key for key in run.data.tags if key.startswith("kedro.node_")]


def test_a_resumed_run_keeps_its_experiment(client, mlflow_server, tmp_path):
    """mlflow.yml names another experiment: the run is resumed where it is, none created."""
    project = make_project(tmp_path, mlflow="tracking: {experiment: {name: somewhere-else}}")
    run_id = new_run(client, "home-experiment")
    home = client.get_run(run_id).info.experiment_id
    env = env_for(mlflow_server, MLFLOW_RUN_ID=run_id)
    result = project.run(["run"], env)
    assert result.returncode == 0, output_of(result)[-4000:]
    run = client.get_run(run_id)
    assert run.info.experiment_id == home
    assert run.info.status == "FINISHED"
    assert client.get_experiment_by_name("somewhere-else") is None


def test_a_failure_message_that_is_not_utf8_or_too_long_is_recorded(
    client, mlflow_server, tmp_path
):
    project = make_project(tmp_path)
    run_id = new_run(client, "bad-error-text")
    env = env_for(mlflow_server, MLFLOW_RUN_ID=run_id, TINY_PIPELINE="failing")
    # Kedro prints the message's undecodable byte as is: read the output as bytes.
    result = subprocess.run(project.command("run"), cwd=project.root, env=env, capture_output=True)
    assert result.returncode != 0
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILED_NODE] == "fails.badly"
    error = run.data.tags[TAG_ERROR]
    assert error.startswith("ValueError: bad \ufffd byte xxx")
    assert len(error) <= MAX_TAG_VALUE_LENGTH
    assert error.endswith("...[truncated]")
    assert node_statuses(client, run_id, ["fails.badly"]) == {"fails.badly": "failed"}
    assert run.data.tags[node_key(TAG_NODE_ERROR, "fails.badly")] == error
    assert node_key(TAG_NODE_HOST, "fails.badly") == f"{TAG_NODE_HOST}.fails.badly"
    assert run.data.tags[node_key(TAG_NODE_HOST, "fails.badly")]  # where to find its logs
