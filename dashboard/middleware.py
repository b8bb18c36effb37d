"""Middleware of the project."""

from __future__ import annotations

import logging
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from orgs.errors import ServiceError
from orgs.jsonapi import error_response

logger = logging.getLogger("dashboard.api")


class _InternalError(ServiceError):
    status = 500
    type = "server_error"


class ApiErrorMiddleware:
    """An unexpected exception under /api/ becomes a JSON 500 in the contract's shape, never a
    debug page or a stack trace in the body (the trace goes to the log only)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            return None
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
