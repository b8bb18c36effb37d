"""Middleware of the project."""

from __future__ import annotations

import logging
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from orgs.errors import ServiceError, ServiceUnavailable
from orgs.jsonapi import error_response

logger = logging.getLogger("dashboard.api")


class _InternalError(ServiceError):
    status = 500
    type = "server_error"


def unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """A part that failed rather than a bug: the database lost its connection or cancelled a
    statement (statement_timeout, a held lock), or Redis cannot be reached. The request is
    answered 503 with Retry-After (and logged as a warning, without request data)."""
    if isinstance(exc, OperationalError | InterfaceError):
        part = "the database"
    else:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
            return None
        part = "the cache (Redis)"
    logger.warning("%s is unavailable (%s)", part, type(exc).__name__)
    return ServiceUnavailable(
        f"{part} is unavailable; try again shortly", headers={"Retry-After": "1"}
    )


def unavailable_page(error: ServiceUnavailable) -> HttpResponse:
    """The plain error page, rendered without the request: its context processors would need the
    part that failed."""
    return HttpResponse(render_to_string("500.html"), status=error.status, headers=error.headers)


class ApiErrorMiddleware:
    """An unexpected exception under /api/ becomes a JSON 500 in the contract's shape, never a
    debug page or a stack trace in the body (the trace goes to the log only). A failing database
    or Redis is a 503 (JSON under /api/, a plain page elsewhere)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        failed_part = unavailable(exception)
        if not request.path.startswith("/api/"):
            return None if failed_part is None else unavailable_page(failed_part)
        if failed_part is not None:
            return error_response(failed_part)
        if isinstance(exception, ServiceError):
            return error_response(exception)
        logger.error(
            "unhandled %s on %s %s",
            type(exception).__name__,
            request.method,
            request.path,
            exc_info=exception,
        )
        return error_response(_InternalError("internal error; the request was not completed"))
