"""Which failures are waited out, and under which budget: the outage policy's classifier."""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from kedro_vertex_hooks.rest_client import RestApiError, RestConnectionError
from kedro_vertex_hooks.retry import trouble_kind

# What MLflow 3's server answers when log-batch requests exhaust its SQL connection pool.
POOL_EXHAUSTED = (
    "(sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 overflow 10 reached, "
    "connection timed out, timeout 30.00 (Background on this error at: https://sqlalche.me/e/20/3o7r)"
)


def rest_connection_error(cause: Exception) -> RestConnectionError:
    try:
        raise RestConnectionError(
            f"API request to http://127.0.0.1:1/x failed with exception {cause}"
        ) from cause
    except RestConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RestApiError(429, "RESOURCE_EXHAUSTED", "slow down"), "busy"),
        (RestApiError(503, "TEMPORARILY_UNAVAILABLE", "busy"), "busy"),
        (RestApiError(400, "BAD_REQUEST", POOL_EXHAUSTED), "busy"),
        (RestException({"error_code": "BAD_REQUEST", "message": POOL_EXHAUSTED}), "busy"),
        (RestApiError(502, "BAD_GATEWAY", "upstream gone"), "down"),
        (RestApiError(500, "INTERNAL_ERROR", "boom"), "down"),
        (rest_connection_error(requests.exceptions.ReadTimeout("Read timed out.")), "busy"),
        (rest_connection_error(requests.exceptions.ConnectionError("refused")), "down"),
        (
            RestApiError(400, "INVALID_PARAMETER_VALUE", "Changing param values is not allowed"),
            None,
        ),
        (RestApiError(403, "PERMISSION_DENIED", "IAP said no"), None),
        (RestApiError(404, "RESOURCE_DOES_NOT_EXIST", "Run 'abc' not found"), None),
        (MlflowException("Invalid metric value"), None),
        (FileNotFoundError("model.pkl"), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_trouble_kind(error: Exception, expected: str | None) -> None:
    assert trouble_kind(error) == expected
