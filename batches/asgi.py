"""An ASGI guard for file uploads. Django's ASGI handler reads a whole request body (spooled to a
temporary file) before any view runs, so without this a 10 GB upload would fill the disk before
the upload handler's 413. An upload whose Content-Length is already over the limit is refused
here, unread; smaller ones (and chunked bodies) are still capped by the upload handler."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

UPLOAD_PATH = "/api/v1/llm/files"
# Multipart framing around the file (boundaries, part headers, the purpose field).
MULTIPART_SLACK = 64 * 1024


class UploadSizeGuard:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == UPLOAD_PATH
            and self._too_large(scope)
        ):
            await self._refuse(send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _too_large(scope: Scope) -> bool:
        from django.conf import settings

        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return False
                return length > settings.FILES_MAX_UPLOAD_BYTES + MULTIPART_SLACK
        return False

    @staticmethod
    async def _refuse(send: Send) -> None:
        from django.conf import settings

        limit = settings.FILES_MAX_UPLOAD_BYTES
        body = json.dumps(
            {
                "error": {
                    "message": f"the file is larger than the maximum of {limit} bytes",
                    "type": "invalid_request_error",
                    "param": "file",
                    "code": 413,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
