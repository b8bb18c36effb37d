"""The ASGI handler of the JSON API (`/api/...`): Django's request and response objects, without
the page machinery.

The pages need sessions, CSRF, messages and auth middleware; the API needs none of them, and
under ASGI each of those (sync) middleware hooks costs a hand-off to a thread, as do the
request_started/finished signals and closing the response through `sync_to_async`. Profiling the
gateway showed those hand-offs as about half of its CPU per request. This handler keeps Django's
request parsing, URL resolution and response sending, and runs:
- async views (the gateway) directly on the event loop;
- sync views (the registry API) in a worker thread, closing stale database connections before and
  after as Django's request signals would;
- unexpected exceptions into the contract's JSON 500, logged without request data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix
from django.utils.log import log_response

from dashboard.middleware import _InternalError, unavailable
from dashboard.security import API_HEADERS, hsts_value
from orgs.errors import InvalidRequest, PermissionDenied, ServiceError
from orgs.jsonapi import error_response, not_found

logger = logging.getLogger("dashboard.api")


def _call_sync(
    view: Any, request: HttpRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    close_old_connections()
    try:
        return view(request, *args, **kwargs)
    finally:
        close_old_connections()


_call_sync_async = sync_to_async(_call_sync, thread_sensitive=False)


class ApiASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = None
        self.resolver = get_resolver()
        # The same security headers as the pages', with a CSP that allows nothing (JSON).
        self.security_headers = API_HEADERS
        self.hsts = hsts_value()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        try:
            request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it for the pages
            match = self.resolver.resolve(request.path_info)
        except DisallowedHost:
            response: HttpResponseBase = error_response(InvalidRequest("invalid Host header"))
        except Resolver404:
            response = not_found(request)
        else:
            request.resolver_match = match
            try:
                if iscoroutinefunction(match.func):
                    response = await match.func(request, *match.args, **match.kwargs)
                else:
                    response = await _call_sync_async(match.func, request, match.args, match.kwargs)
            except ServiceError as exc:
                response = error_response(exc)
            except Exception as exc:
                response = self._server_error(request, exc)
        headers = response.headers
        for name, value in self.security_headers:
            headers.setdefault(name, value)
        if self.hsts and request.is_secure():
            headers.setdefault("Strict-Transport-Security", self.hsts)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            # As Django logs them (django.request): the method, path and status, no data.
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    @staticmethod
    def _server_error(request: HttpRequest, exc: Exception) -> HttpResponseBase:
        from django.core.exceptions import BadRequest, SuspiciousOperation
        from django.core.exceptions import PermissionDenied as DjangoPermissionDenied

        if isinstance(exc, DjangoPermissionDenied):
            return error_response(PermissionDenied("permission denied"))
        if isinstance(exc, SuspiciousOperation | BadRequest):
            return error_response(InvalidRequest("the request was refused as malformed"))
        failed_part = unavailable(exc)
        if failed_part is not None:
            return error_response(failed_part)
        logger.error(
            "unhandled %s on %s %s", type(exc).__name__, request.method, request.path, exc_info=exc
        )
        return error_response(_InternalError("internal error; the request was not completed"))

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """Django's `ASGIHandler.handle` without the request signals and thread hand-offs."""
        from django.core.exceptions import RequestAborted

        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, early = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response(ServiceError("malformed request")), send)
            if early is not None:
                early.close()
            return

        async def process_request() -> HttpResponseBase:
            response = await self.get_response_async(request)
            response._handler_class = self.__class__
            # The client may go away while we are sending.
            with contextlib.suppress(asyncio.CancelledError):
                await self.send_response(response, send)
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):
                    task.result()
            else:
                task.cancel()  # a disconnect cancels the view (and so its upstream call)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            response.close()
        body_file.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handle(scope, receive, send)
