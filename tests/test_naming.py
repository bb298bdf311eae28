"""Keys and values made legal for MLflow: pure functions, checked against MLflow's own rules."""

from __future__ import annotations

import numpy as np
import pytest

from kedro_vertex_hooks.naming import (
    DEFAULT_SECRET_PATTERNS,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    TAG_NODE_HOST,
    clean_text,
    flatten,
    is_secret_key,
    legal_key,
    node_key,
    node_params,
    trim,
    value_to_text,
)
from tests.support.odd_values import BrokenRepr, Optimizer, Window


def assert_mlflow_accepts_key(key: str) -> None:
    """MLflow's own validation (the client runs it before sending a batch)."""
    from mlflow.utils.validation import _validate_param_name, _validate_tag_name

    _validate_param_name(key)
    _validate_tag_name(key)
    assert len(key) <= MAX_KEY_LENGTH


@pytest.mark.parametrize(
    "raw",
    [
        "model.lr",
        "a b!c?",
        "naïve/ключ",
        "/leading/and/trailing/",
        "a//b///c",
        "../../etc/passwd",
        "x..y",
        "tab\there",
        "",
        "/",
        "emoji 🚀 key",
        "k" * 400,
        "é" * 300,
        "a/" * 200,
    ],
)
def test_any_text_becomes_a_key_mlflow_accepts(raw):
    assert_mlflow_accepts_key(legal_key(raw))


def test_legal_keys_come_back_unchanged():
    for key in ("model.linear.lr", "data/seed", "a-b_c: d", "x" * MAX_KEY_LENGTH):
        assert legal_key(key) == key


def test_illegal_characters_become_underscores_and_slashes_are_tidied():
    assert legal_key("a b!c") == "a b_c"
    assert legal_key("/a//b/") == "a/b"
    assert legal_key("a/../b") == "a/__/b"
    assert legal_key("") == "_"


def test_long_keys_stay_distinct_and_within_the_limit():
    first, second = "k" * 300 + "1", "k" * 300 + "2"
    assert legal_key(first) != legal_key(second)
    assert len(legal_key(first)) == MAX_KEY_LENGTH
    assert legal_key(first).startswith("k" * 200)
    assert legal_key(first) == legal_key(first)  # stable across processes


@pytest.mark.parametrize(
    "node_name",
    ["train model (v2)", "n" * 300, "a/b", "名前", "split:train", "x" * 236 + "?"],
)
def test_node_keys_are_legal_and_keep_the_node_part(node_name):
    key = node_key(TAG_NODE_HOST, node_name)
    assert_mlflow_accepts_key(key)
    assert key == TAG_NODE_HOST + "." + legal_key(
        node_name, MAX_KEY_LENGTH - len(TAG_NODE_HOST) - 1
    )


def test_two_long_node_names_with_a_common_start_get_different_keys():
    prefix = "preprocess_" * 30
    assert node_key(TAG_NODE_HOST, prefix + "a") != node_key(TAG_NODE_HOST, prefix + "b")


def test_trim_marks_the_cut_and_respects_the_limit():
    assert trim("short", 10) == "short"
    trimmed = trim("x" * 7000, MAX_PARAM_VALUE_LENGTH)
    assert len(trimmed) == MAX_PARAM_VALUE_LENGTH
    assert trimmed.endswith("...[truncated]")


def test_text_from_undecodable_bytes_becomes_valid_utf8():
    undecodable = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    cleaned = clean_text(undecodable)
    cleaned.encode("utf-8")  # would raise on a lone surrogate
    assert cleaned.startswith("caf") and "\ufffd" in cleaned
    assert clean_text("déjà vu") == "déjà vu"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        ("text", "text"),
        (None, "None"),
        ([1, "a"], "[1, 'a']"),
        ({3, 1, 2}, "[1, 2, 3]"),
        (frozenset({"b", "a"}), "['a', 'b']"),
        (np.float64(0.5), "0.5"),
        (np.int32(7), "7"),
        (np.bool_(True), "True"),
        (np.array([[1, 2], [3, 4]]), "[[1, 2], [3, 4]]"),
        (Window(3, frozenset({"x"})), "{'size': 3, 'tags': ['x']}"),
        (Optimizer(name="adam", betas=(0.5, 0.6)), "{'name': 'adam', 'betas': (0.5, 0.6)}"),
        (BrokenRepr(), "<unrepresentable BrokenRepr>"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff\xfe", "\ufffd\ufffd"),
        ("bad \udcff text", "bad \ufffd text"),
    ],
    ids=lambda value: type(value).__name__,
)
def test_any_value_becomes_plain_text_without_raising(value, expected):
    text = value_to_text(value)
    assert text == expected
    text.encode("utf-8")


def test_a_value_the_same_in_every_process():
    # Sets have no stable order across processes (hash seeds): the text must not depend on it.
    assert value_to_text({"b", "a", "c"}) == value_to_text({"c", "b", "a"}) == "['a', 'b', 'c']"


def test_flatten_nested_dicts_with_the_configured_separator():
    nested = {"model": {"a": {"b": 1}, "c": 2}, "empty": {}, "top": 3}
    assert flatten(nested) == {"model.a.b": 1, "model.c": 2, "empty": {}, "top": 3}
    assert flatten(nested, sep="/") == {"model/a/b": 1, "model/c": 2, "empty": {}, "top": 3}
    assert flatten(nested, recursive=False) == {
        "model.a": {"b": 1},
        "model.c": 2,
        "empty": {},
        "top": 3,
    }


@pytest.mark.parametrize(
    "key",
    ["db.password", "API_KEY", "github_token", "aws.credentials.id", "client_secret", "apikey"],
)
def test_keys_that_look_secret(key):
    assert is_secret_key(key, DEFAULT_SECRET_PATTERNS)


@pytest.mark.parametrize("key", ["model.lr", "data.seed", "pass_rate"])
def test_keys_that_do_not_look_secret(key):
    assert not is_secret_key(key, DEFAULT_SECRET_PATTERNS)


def test_secret_matching_is_by_substring_on_the_safe_side():
    assert is_secret_key("tokenizer.vocab_size", DEFAULT_SECRET_PATTERNS)
    assert not is_secret_key("tokenizer.vocab_size", ("password",))


def test_node_params_are_the_params_inputs_only():
    inputs = {"params:model": {"lr": 1}, "parameters": {"x": 1}, "raw_data": [1, 2]}
    assert node_params(inputs) == {"model": {"lr": 1}, "parameters": {"x": 1}}
