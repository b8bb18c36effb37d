"""Assertions on the wire shape of api-contract.md §2.2 error bodies, shared by the API tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from meetkai_mka1 import errors

# api-contract.md §2.2: the `type` of each status. 415 is not in the table; it is a client error
# about the request body, so it carries `invalid_request_error` like 400 and 413.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def check_error_body(status: int, content_type: str | None, body: Any) -> dict[str, Any]:
    """Assert the §2.2 shape for an error of `status`; return the inner `error` object."""
    assert media_type(content_type) == "application/json", (
        f"error {status} has content type {content_type!r}, not application/json"
    )
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
        f"error {status} body is not {{'error': {{...}}}}: {body!r}"
    )
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), f"missing keys in {error!r}"
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ERROR_TYPES.get(status, error["type"]), (
        f"status {status} should have type {ERROR_TYPES.get(status)!r}: {error!r}"
    )
    assert error["param"] is None or isinstance(error["param"], str), error
    assert type(error["code"]) is int and error["code"] == status, (
        f"code must be the integer status {status}: {error!r}"
    )
    return error


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """Assert an httpx (or rawhttp) response is the §2.2 error body for `status`."""
    actual = getattr(response, "status_code", None) or getattr(response, "status", None)
    text = response.text
    assert actual == status, f"expected {status}, got {actual}: {text[:500]}"
    content_type = response.headers.get("content-type")
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"error {status} body is not JSON: {text[:500]!r}") from None
    return check_error_body(status, content_type, body)


def assert_sdk_error(exc: errors.SDKError, status: int, type_: str) -> dict[str, Any]:
    """The official client's error has this status and the §2.2 body; returns the inner error."""
    assert exc.status_code == status, exc.body
    body = json.loads(exc.body)
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["code"] == status and isinstance(error["code"], int)
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    return error


def sdk_error(call: Any, /, *args: Any, **kw: Any) -> errors.SDKError:
    """The SDKError that `call(*args, **kw)` raises (the test fails if it raises none)."""
    with pytest.raises(errors.SDKError) as info:
        call(*args, **kw)
    return info.value
