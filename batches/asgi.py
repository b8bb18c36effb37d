"""An ASGI guard for file uploads. Django's ASGI handler reads a whole request body (spooled to a
temporary file) before any view runs, so the upload handler's 413 (batches.uploads) comes only
after the body is on disk. This guard caps the body itself, whatever its framing:
- a Content-Length already over the limit is refused at once, unread;
- every upload body is counted as it arrives, and once it passes the limit the handler is told
  the client went away (it drops what it spooled) and the client gets the 413; the rest of the
  body is never read (the server stops reading the socket and closes the connection);
- a body without a Content-Length (Transfer-Encoding: chunked) gets one once it has been read
  whole: Django's multipart parser treats a body of unknown length as empty.
The limit is on the body: the file plus MULTIPART_SLACK of multipart framing; the upload handler
then holds the file itself to exactly FILES_MAX_UPLOAD_BYTES."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPLOAD_PATH = "/api/v1/llm/files"
# Multipart framing around the file (boundaries, part headers, the purpose field).
MULTIPART_SLACK = 64 * 1024


class UploadSizeGuard:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == UPLOAD_PATH
        ):
            await self.app(scope, receive, send)
            return
        from django.conf import settings

        cap = settings.FILES_MAX_UPLOAD_BYTES + MULTIPART_SLACK
        length = _content_length(scope)
        if length is not None and length > cap:
            await self._refuse(send)
            return
        counter = _BodyCounter(scope, receive, cap, add_length=length is None)
        await self.app(counter.scope, counter.receive, send)
        if counter.over:
            await self._refuse(send)

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


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length; None without one (or with one that is not a number, which
    the HTTP server would not have let through)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _BodyCounter:
    """Counts the body bytes that the application receives. Past `cap` it answers every receive
    with `http.disconnect` (Django's handler then closes its spooled body and stops) and never
    reads the client's body again."""

    def __init__(self, scope: Scope, receive: Receive, cap: int, *, add_length: bool) -> None:
        self.scope = dict(scope)
        self.scope["headers"] = list(scope.get("headers") or ())
        self._receive = receive
        self.cap = cap
        self.add_length = add_length
        self.received = 0
        self.over = False

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body") or b"")
        if self.received > self.cap:
            self.over = True
            return {"type": "http.disconnect"}
        if self.add_length and not message.get("more_body", False):
            # Read whole: the handler builds its request from the scope only after this.
            self.scope["headers"].append((b"content-length", str(self.received).encode()))
            self.add_length = False
        return message
