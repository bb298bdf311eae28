"""A node's parameter inputs as MLflow params: flattening, legal keys, secrets, long values."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kedro_vertex_hooks.config import DictParamsConfig, ParamsConfig
from kedro_vertex_hooks.naming import (
    DEFAULT_SECRET_PATTERNS,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    SECRET_MASK,
    TAG_LONG_PARAM,
    legal_key,
)
from kedro_vertex_hooks.params import LongParamError, prepare_params
from tests.support.odd_values import EXPECTED_TEXT, Optimizer, odd_values

DEFAULT = ParamsConfig()


def prepared(inputs, config: ParamsConfig = DEFAULT, patterns=DEFAULT_SECRET_PATTERNS):
    return prepare_params(inputs, config, patterns)


def test_only_parameter_inputs_are_logged_and_nested_dicts_are_flattened():
    inputs = {
        "params:model": {"linear": {"lr": 0.1, "epochs": 3}},
        "parameters": {"seed": 1},
        "raw_data": {"not": "a param"},
    }
    assert prepared(inputs).params == {
        "model.linear.lr": "0.1",
        "model.linear.epochs": "3",
        "parameters.seed": "1",
    }


def test_flattening_follows_mlflow_yml():
    inputs = {"params:model": {"linear": {"lr": 0.1}}}
    one_level = ParamsConfig(dict_params=DictParamsConfig(recursive=False, sep="/"))
    assert prepared(inputs, one_level).params == {"model/linear": "{'lr': 0.1}"}
    off = ParamsConfig(dict_params=DictParamsConfig(flatten=False))
    assert prepared(inputs, off).params == {"model": "{'linear': {'lr': 0.1}}"}


def test_keys_mlflow_rejects_are_made_legal(caplog):
    from mlflow.utils.validation import _validate_param_name

    inputs = {"params:odd": {"learning rate (%)": 1, "a//b": 2, "../up": 3, "k" * 300: 4}}
    with caplog.at_level(logging.DEBUG, logger="kedro_vertex_hooks.params"):
        params = prepared(inputs).params
    assert params["odd.learning rate ___"] == "1"
    assert params["odd.a/b"] == "2"
    assert len(params) == 4
    for key in params:
        _validate_param_name(key)
        assert len(key) <= MAX_KEY_LENGTH
    assert "logged as 'odd.learning rate ___'" in caplog.text


def test_values_that_are_not_plain_data_are_logged_as_text():
    params = prepared({"params:odd": odd_values()}).params
    for raw_key, text in EXPECTED_TEXT.items():
        assert params[legal_key(f"odd.{raw_key}")] == text, raw_key
    assert params[legal_key("odd." + "k" * 300)] == "3"
    assert len(params["odd.long_value"]) == MAX_PARAM_VALUE_LENGTH


def test_secret_looking_keys_are_masked_at_any_depth():
    inputs = {
        "params:db": {"host": "h", "password": "hunter2", "nested": {"API_KEY": "k"}},
        "params:github_token": "ghp_xyz",
        "params:connections": [{"name": "a", "secret": "s1"}, {"name": "b"}],
        "params:service": Optimizer(name="svc", betas=(0.1, 0.2)),
    }
    params = prepared(inputs).params
    assert params["db.host"] == "h"
    assert params["db.password"] == SECRET_MASK
    assert params["db.nested.API_KEY"] == SECRET_MASK
    assert params["github_token"] == SECRET_MASK
    assert params["connections"] == "[{'name': 'a', 'secret': '***'}, {'name': 'b'}]"
    assert params["service"] == "{'name': 'svc', 'betas': (0.1, 0.2)}"
    assert "hunter2" not in repr(params) and "s1" not in repr(params)


def test_secrets_stay_masked_without_flattening():
    inputs = {"params:db": {"user": "u", "password": "hunter2"}}
    off = ParamsConfig(dict_params=DictParamsConfig(flatten=False))
    assert prepared(inputs, off).params == {"db": "{'user': 'u', 'password': '***'}"}


@dataclasses.dataclass
class Credentials:
    user: str
    api_key: str


def test_secret_fields_of_dataclasses_are_masked():
    params = prepared({"params:login": Credentials("u", "k-123")}).params
    assert params == {"login": "{'user': 'u', 'api_key': '***'}"}


def test_secret_patterns_are_configurable():
    inputs = {"params:conn": {"password": "p", "dsn": "postgres://u:p@h"}}
    params = prepared(inputs, patterns=("dsn",)).params
    assert params == {"conn.password": "p", "conn.dsn": SECRET_MASK}


def test_long_values_are_truncated_by_default(caplog):
    params = prepared({"params:blob": "x" * 7000}).params
    assert len(params["blob"]) == MAX_PARAM_VALUE_LENGTH
    assert params["blob"].endswith("...[truncated]")
    assert "Parameter 'blob' is 7000 characters long" in caplog.text


def test_long_values_can_be_kept_whole_in_a_tag():
    result = prepared({"params:blob": "y" * 7000}, ParamsConfig(long_params_strategy="tag"))
    assert len(result.params["blob"]) == MAX_PARAM_VALUE_LENGTH
    assert result.tags[f"{TAG_LONG_PARAM}.blob"] == "y" * 7000
    huge = prepared({"params:blob": "z" * 9000}, ParamsConfig(long_params_strategy="tag"))
    assert len(huge.tags[f"{TAG_LONG_PARAM}.blob"]) == MAX_TAG_VALUE_LENGTH


def test_long_values_can_fail_the_node_with_the_key_named():
    with pytest.raises(LongParamError, match="Parameter 'blob' is 7000 characters long"):
        prepared({"params:blob": "x" * 7000}, ParamsConfig(long_params_strategy="fail"))
