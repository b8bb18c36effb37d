"""The small toolkit every JSON API handler uses: routing by method, bearer auth, JSON in and out,
and the one error body of api-contract.md §2.2 for every failure."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from orgs.auth import Caller, aauthenticate, authenticate
from orgs.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse(
        data,
        status=status,
        safe=False,
        headers=headers,
        json_dumps_params={"separators": (",", ":"), "ensure_ascii": False},
    )


def error_response(error: ServiceError) -> JsonResponse:
    return json_response(error.body(), status=error.status, headers=error.headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def strict_loads(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and numbers too large for a float (ValueError),
    which Python accepts and no other JSON reader or the databases do."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)


def parse_json_bytes(raw: bytes) -> Any:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidRequest("request body must not start with a byte order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    if not text.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        data = strict_loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if "\\u0000" in text:  # the databases cannot store NUL in text; no field needs one
        path = _nul_path(data)
        if path is not None:
            raise InvalidRequest(
                f"{path or 'body'}: must not contain NUL characters (\\u0000)", param=path or None
            )
    return data


def _nul_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding a NUL character, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return child
            found = _nul_path(item, child)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def read_body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise PayloadTooLarge("request body is larger than the configured maximum") from None


def read_json(request: HttpRequest) -> Any:
    """The parsed JSON body; 415 for another content type, 400 for anything that is not JSON."""
    raw = read_body(request)
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/json" and (content_type or raw):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {content_type or 'none'}"
        )
    return parse_json_bytes(raw)


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    data = read_json(request)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def _check_path_values(kwargs: dict[str, Any]) -> None:
    """Ids in the path with control characters (NUL above all) name nothing that can exist."""
    for name, value in kwargs.items():
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise NotFound(f"no such {name}: it contains control characters", param=name)


def endpoint(**handlers: Handler) -> Callable[..., HttpResponseBase]:
    """A view that dispatches on method to `handler(request, caller, **kwargs)`.

    Unknown methods get 405, a missing or bad key 401, a ServiceError its own status; the
    handler's return value is sent as a 200 JSON body (or as is, for an HttpResponse).
    """
    allowed = ", ".join(sorted(handlers))

    @csrf_exempt
    def view(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        handler = handlers.get(request.method or "")
        try:
            if handler is None:
                raise MethodNotAllowed(
                    f"method {request.method} is not allowed here; use {allowed}",
                    headers={"Allow": allowed},
                )
            caller = authenticate(request)
            _check_path_values(kwargs)
            result = handler(request, caller, **kwargs)
        except ServiceError as exc:
            return error_response(exc)
        if isinstance(result, HttpResponseBase):
            return result
        return json_response(result)

    view.handlers = handlers  # type: ignore[attr-defined]
    return view


def async_endpoint(
    **handlers: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[HttpResponseBase]]:
    """The async twin of `endpoint`, for handlers that await upstream calls. Keys are looked up
    through the hot-path cache (`aauthenticate`)."""
    allowed = ", ".join(sorted(handlers))

    @csrf_exempt
    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        handler = handlers.get(request.method or "")
        try:
            if handler is None:
                raise MethodNotAllowed(
                    f"method {request.method} is not allowed here; use {allowed}",
                    headers={"Allow": allowed},
                )
            caller: Caller = await aauthenticate(request)
            _check_path_values(kwargs)
            result = await handler(request, caller, **kwargs)
        except ServiceError as exc:
            return error_response(exc)
        if isinstance(result, HttpResponseBase):
            return result
        return json_response(result)

    view.handlers = handlers  # type: ignore[attr-defined]
    return view


@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
