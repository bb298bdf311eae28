"""Parameter values YAML cannot express, shared by the unit tests and a generated project's
hook (which imports this module: run it with the repository on PYTHONPATH)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pydantic


@dataclasses.dataclass
class Window:
    size: int
    tags: frozenset[str] = frozenset()


class Optimizer(pydantic.BaseModel):
    name: str
    betas: tuple[float, float] = (0.9, 0.99)


class BrokenRepr:
    """A user's object whose ``repr`` and ``str`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    __str__ = __repr__


def odd_values() -> dict[str, Any]:
    """One of each kind, under keys MLflow rejects or that are too long; see EXPECTED_TEXT."""
    return {
        "a set": {3, 1, 2},
        "np_scalar": np.float64(0.25),
        "np_array": np.arange(4).reshape(2, 2),
        "window": Window(5),
        "optimizer": Optimizer(name="adam"),
        "broken": BrokenRepr(),
        "latin1 bytes": b"caf\xe9",
        "undecodable text": b"caf\xe9".decode("utf-8", "surrogateescape"),
        "weird key!?": 1,
        "../escape": 2,
        "k" * 300: 3,
        "long_value": "v" * 7000,
    }


# The text each value of odd_values() is logged as (the long ones are checked apart).
EXPECTED_TEXT = {
    "a set": "[1, 2, 3]",
    "np_scalar": "0.25",
    "np_array": "[[0, 1], [2, 3]]",
    "window": "{'size': 5, 'tags': []}",
    "optimizer": "{'name': 'adam', 'betas': (0.9, 0.99)}",
    "broken": "<unrepresentable BrokenRepr>",
    "latin1 bytes": "caf\ufffd",
    "undecodable text": "caf\ufffd",
    "weird key!?": "1",
    "../escape": "2",
}
