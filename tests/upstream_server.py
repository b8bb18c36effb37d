"""A small, fast OpenAI-compatible model server: the stand-in for real providers in tests.

It is a raw ASGI application served by uvicorn on 127.0.0.1, either in-process (`UpstreamServer`,
a background thread) or as a subprocess (`python -m tests.upstream_server --port N`, which prints
`READY <port>` once it listens; see `start_subprocess`).

The behaviour of `POST /v1/chat/completions` is chosen by the request's `model`: the name is split
on `+` into options, and an option may carry a number after `@` (`chunks@5+delay@20`). Parts that
are not options (a base name such as `gpt-test`) are ignored.

    chunks@N        N content chunks, tokens "tok0 ", "tok1 ", ... (default 20)
    delay@MS        sleep MS ms between stream chunks; a non-streaming answer sleeps MS x chunks
    first@MS        sleep MS ms before the response headers (slow first token)
    no-usage        no `usage` in the non-streaming answer and never a usage chunk
    echo            the answer is the JSON dump of the received {"headers", "body"} (credential
                    headers masked as "[credential]")
    fault-5xx       500 JSON error before any stream
    fault-4xx       400 JSON error (invalid_request_error) whose message quotes the credentials
                    it received (Authorization, api-key, x-* headers)
    fault-429       429 JSON error with `Retry-After: 7`
    fault-reset@N   stream N chunks (default 3), then drop the connection mid-body;
                    non-streaming: drop the connection without any response
    fault-inband-error  200 stream: 2 chunks, then `data: {"error": ...}`, then a clean end
                    without [DONE]; non-streaming: 200 `{"error": ...}`
    fault-trickle@MS    headers, then one byte every MS ms (default 4000) until the client leaves
    fault-hang      never send headers; wait until the client leaves
    fault-bad-sse   `: ping`, `event: foo`, CRLF endings, `data: not json`, a UTF-8 character
                    split across two sends, then valid chunks and [DONE]
    fault-eof       stream: valid chunks, then EOF without finish_reason or [DONE];
                    non-streaming: half of the body promised by Content-Length, then EOF
    fault-redirect@PORT     302 to http://127.0.0.1:PORT/ (default: this server)
    fault-redirect-internal 302 to this server's /_internal/secret (recorded when followed)
    fault-html      200 text/html `<html>oops</html>`
    fault-badjson   200 application/json `{not json`
    fault-big@MB    200 JSON completion of MB megabytes (default 20), sent in 64 KB pieces

Other endpoints: `GET /v1/models` (and `/models`), `GET /health` (200), `GET /health/503` (503),
`GET /health/delay@MS` (200 after MS ms; counted in `open_requests` and `peak_open_requests`, so
that tests can see overlapping health probes),
`GET /_internal/secret`, and the control endpoints `GET /_requests`, `POST /_reset`, `GET /_stats`
(not recorded themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHUNKS = 20
DEFAULT_RESET_AFTER = 3
DEFAULT_TRICKLE_MS = 4000
DEFAULT_BIG_MB = 20
MAX_RECORDS = 1000
BAD_SSE_TEXT = "café 🙂 "  # the multibyte piece fault-bad-sse splits across two sends
INTERNAL_SECRET = "internal-canary-7d1e"  # served by /_internal/secret (redirect target)
MODELS = ("upstream-test",)
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
FAULTS = frozenset(
    {
        "fault-5xx",
        "fault-4xx",
        "fault-429",
        "fault-reset",
        "fault-inband-error",
        "fault-trickle",
        "fault-hang",
        "fault-bad-sse",
        "fault-eof",
        "fault-redirect",
        "fault-redirect-internal",
        "fault-html",
        "fault-badjson",
        "fault-big",
    }
)
CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
CONTROL_PATHS = frozenset({"/_requests", "/_reset", "/_stats"})
_PIECE = b"x" * 65536

LoopName = Literal["uvloop", "asyncio"]
HttpName = Literal["httptools", "h11"]
LOOP: LoopName = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
HTTP: HttpName = "httptools" if importlib.util.find_spec("httptools") else "h11"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    chunks: int = DEFAULT_CHUNKS
    delay_ms: float = 0.0
    first_ms: float = 0.0
    usage: bool = True
    echo: bool = False
    fault: str | None = None
    fault_arg: int | None = None


@lru_cache(maxsize=1024)
def parse_options(model: str) -> Options:
    """Options encoded in a model name: `chunks@5+delay@20+fault-reset@2`."""
    chunks, delay, first = DEFAULT_CHUNKS, 0.0, 0.0
    usage, echo = True, False
    fault: str | None = None
    fault_arg: int | None = None
    for part in model.split("+"):
        name, _, raw = part.strip().partition("@")
        number = _number(raw)
        if name == "chunks" and number is not None:
            chunks = max(0, int(number))
        elif name == "delay" and number is not None:
            delay = max(0.0, number)
        elif name == "first" and number is not None:
            first = max(0.0, number)
        elif name == "no-usage":
            usage = False
        elif name == "echo":
            echo = True
        elif name in FAULTS and fault is None:
            fault = name
            fault_arg = None if number is None else max(0, int(number))
    return Options(chunks, delay, first, usage, echo, fault, fault_arg)


def _number(raw: str) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def answer_text(model: str) -> str:
    """The content a well-behaved (non-echo) request for `model` receives."""
    return "".join(_pieces(parse_options(model)))


def _pieces(opts: Options) -> list[str]:
    pieces = [f"tok{i} " for i in range(opts.chunks)]
    if opts.fault == "fault-bad-sse":
        pieces.insert(min(1, len(pieces)), BAD_SSE_TEXT)
    return pieces


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Total characters of the message contents // 4, at least 1."""
    total = 0
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return max(1, total // 4)


# --------------------------------------------------------------------------- the application


class _Abort(Exception):
    """Raised by a handler to drop the connection without finishing the response."""


@dataclass
class _Exchange:
    send: Send
    path: str
    headers: dict[str, str]
    body: Any
    server_port: int
    opts: Options = field(default_factory=Options)
    model: str = ""
    stream: bool = False
    include_usage: bool = False
    finished: bool = False  # the last body message was (about to be) sent
    streaming: bool = False  # counted in open_streams


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class UpstreamApp:
    """The ASGI application; one instance holds one set of records and counters."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._lock = threading.Lock()
        self._records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._requests = 0
        self._client_disconnects = 0
        self._open_streams = 0
        self._completed_streams = 0
        self._open_requests = 0
        self._peak_open_requests = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None

    # ---- state, safe to call from any thread

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self._requests,
                "client_disconnects": self._client_disconnects,
                "open_streams": self._open_streams,
                "completed_streams": self._completed_streams,
                "open_requests": self._open_requests,
                "peak_open_requests": self._peak_open_requests,
            }

    def reset(self) -> None:
        """Clear the records and the totals (open_* gauges track live work and are kept; the peak
        restarts from the requests open now)."""
        with self._lock:
            self._records.clear()
            self._requests = 0
            self._client_disconnects = 0
            self._completed_streams = 0
            self._peak_open_requests = self._open_requests

    def close(self) -> None:
        """Drop every in-flight request (hang, trickle...) so that the server can stop at once."""
        loop, event = self._loop, self._closing
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(event.set)

    def _closing_event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._closing is None or self._loop is not loop:
            self._loop, self._closing = loop, asyncio.Event()
        return self._closing

    # ---- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        if raw is None:  # the client left while sending the body
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if path in CONTROL_PATHS:
            await self._control(method, path, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        body = _parse_body(raw)
        record = {
            "method": method,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
            "body": body,
            "time": time.time(),
        }
        with self._lock:
            self._records.append(record)
            self._requests += 1
        server = scope.get("server") or ("127.0.0.1", 0)
        ex = _Exchange(send=send, path=path, headers=headers, body=body, server_port=server[1])

        if path in CHAT_PATHS:
            if method != "POST":
                await _json(ex, 405, _error("method not allowed", "invalid_request_error"))
            elif not isinstance(body, dict):
                msg = "the body must be a JSON object"
                await _json(ex, 400, _error(msg, "invalid_request_error"))
            else:
                model = body.get("model")
                ex.model = model if isinstance(model, str) else ""
                ex.opts = parse_options(ex.model)
                ex.stream = body.get("stream") is True
                stream_options = body.get("stream_options")
                ex.include_usage = (
                    ex.opts.usage
                    and isinstance(stream_options, dict)
                    and stream_options.get("include_usage") is True
                )
                await self._guarded(receive, ex, self._chat)
        elif path == "/health":
            await _json(ex, 200, {"status": "ok"})
        elif path.startswith("/health/delay@") and _number(path[len("/health/delay@") :]):
            delay_ms = _number(path[len("/health/delay@") :]) or 0.0

            async def slow_health(ex: _Exchange) -> None:
                await asyncio.sleep(delay_ms / 1000)
                await _json(ex, 200, {"status": "ok"})

            await self._guarded(receive, ex, slow_health)
        elif path == "/health/503":
            await _json(ex, 503, {"status": "unavailable"})
        elif path in ("/v1/models", "/models"):
            data = [
                {"id": m, "object": "model", "created": 1704067200, "owned_by": "upstream"}
                for m in MODELS
            ]
            await _json(ex, 200, {"object": "list", "data": data})
        elif path == "/_internal/secret":
            await _json(ex, 200, {"secret": INTERNAL_SECRET})
        else:
            await _json(ex, 404, _error(f"no route for {method} {path}", "not_found_error"))

    async def _control(self, method: str, path: str, send: Send) -> None:
        ex = _Exchange(send=send, path=path, headers={}, body=None, server_port=0)
        if path == "/_requests" and method == "GET":
            await _json(ex, 200, self.requests())
        elif path == "/_stats" and method == "GET":
            await _json(ex, 200, self.stats())
        elif path == "/_reset" and method == "POST":
            self.reset()
            await _json(ex, 200, {"ok": True})
        else:
            await _json(ex, 405, _error("method not allowed", "invalid_request_error"))

    async def _guarded(
        self,
        receive: Receive,
        ex: _Exchange,
        handler: Callable[[_Exchange], Awaitable[None]],
    ) -> None:
        """Run `handler` while watching for `http.disconnect`; stop generating at once on it."""
        closing = self._closing_event()
        work = asyncio.ensure_future(handler(ex))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        stop = asyncio.ensure_future(closing.wait())
        with self._lock:
            self._open_requests += 1
            self._peak_open_requests = max(self._peak_open_requests, self._open_requests)
        try:
            done, _ = await asyncio.wait({work, watch, stop}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                exc = work.exception()
                if isinstance(exc, _Abort):
                    await _drop_connection(ex, watch)
                elif isinstance(exc, OSError):  # a failed send: the client is gone
                    self._count_disconnect(ex)
                elif exc is not None:
                    raise exc
                return
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            if watch in done:
                self._count_disconnect(ex)
            else:  # the server is stopping
                await _drop_connection(ex, watch)
        finally:
            for task in (work, watch, stop):
                task.cancel()
            with self._lock:
                self._open_requests -= 1
                if ex.streaming:
                    self._open_streams -= 1

    def _count_disconnect(self, ex: _Exchange) -> None:
        if not ex.finished:
            with self._lock:
                self._client_disconnects += 1

    # ---- chat completions

    async def _chat(self, ex: _Exchange) -> None:
        opts = ex.opts
        if opts.first_ms:
            await asyncio.sleep(opts.first_ms / 1000)
        fault = opts.fault
        if fault == "fault-hang":
            await asyncio.Future()  # until the client (or the server) goes away
        elif fault == "fault-5xx":
            await _json(ex, 500, _error("upstream exploded", "server_error"))
        elif fault == "fault-4xx":
            # Like real providers ("Incorrect API key provided: sk-…"), it quotes credentials.
            seen = "; ".join(
                f"{name}={value}"
                for name, value in sorted(ex.headers.items())
                if name in ("authorization", "api-key") or name.startswith("x-")
            )
            msg = f"upstream rejected the request (credentials seen: {seen or 'none'})"
            await _json(ex, 400, _error(msg, "invalid_request_error", "bad_request"))
        elif fault == "fault-429":
            msg = "Rate limit reached, retry after 7s"
            err = _error(msg, "rate_limit_error", "rate_limit_exceeded")
            await _json(ex, 429, err, [(b"retry-after", b"7")])
        elif fault == "fault-redirect" or fault == "fault-redirect-internal":
            if fault == "fault-redirect":
                location = f"http://127.0.0.1:{opts.fault_arg or ex.server_port}/"
            else:
                location = f"http://127.0.0.1:{ex.server_port}/_internal/secret"
            await _respond(ex, 302, b"", b"text/plain", [(b"location", location.encode())])
        elif fault == "fault-html":
            await _respond(ex, 200, b"<html>oops</html>", b"text/html; charset=utf-8")
        elif fault == "fault-badjson":
            await _respond(ex, 200, b"{not json", b"application/json")
        elif fault == "fault-big":
            await self._big(ex)
        elif fault == "fault-trickle":
            await self._trickle(ex)
        elif fault == "fault-reset" and not ex.stream:
            raise _Abort
        elif ex.stream:
            await self._stream(ex)
        else:
            await self._complete(ex)

    def _content(self, ex: _Exchange) -> list[str]:
        if ex.opts.echo:
            # A provider never sends its caller's credentials back in an answer: mask them (the
            # request records keep them, for tests of what the upstream received).
            headers = {
                k: "[credential]" if k in CREDENTIAL_HEADERS else v for k, v in ex.headers.items()
            }
            dump = json.dumps({"headers": headers, "body": ex.body}, sort_keys=True)
            return [dump]
        return _pieces(ex.opts)

    def _usage(self, ex: _Exchange, completion_tokens: int) -> dict[str, int]:
        prompt = count_prompt_tokens(ex.body)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def _new_id(self) -> str:
        return f"chatcmpl-up{next(self._ids)}"

    async def _complete(self, ex: _Exchange) -> None:
        opts = ex.opts
        pieces = self._content(ex)
        if opts.delay_ms and pieces:
            await asyncio.sleep(opts.delay_ms * len(pieces) / 1000)
        if opts.fault == "fault-inband-error":
            await _json(ex, 200, _error("in-band failure", "server_error"))
            return
        completion: dict[str, Any] = {
            "id": self._new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ex.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        }
        if opts.usage:
            completion["usage"] = self._usage(ex, len(pieces))
        payload = json.dumps(completion, ensure_ascii=False, separators=(",", ":")).encode()
        if opts.fault == "fault-eof":  # promise the whole body, deliver half of it
            await _start(ex, 200, b"application/json", [(b"content-length", b"%d" % len(payload))])
            await ex.send(
                {
                    "type": "http.response.body",
                    "body": payload[: len(payload) // 2],
                    "more_body": True,
                }
            )
            raise _Abort
        await _respond(ex, 200, payload, b"application/json")

    async def _start_stream(self, ex: _Exchange) -> None:
        headers = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await _start(ex, 200, b"text/event-stream; charset=utf-8", headers)
        ex.streaming = True
        with self._lock:
            self._open_streams += 1

    async def _end_stream(self, ex: _Exchange, tail: bytes) -> None:
        ex.finished = True
        with self._lock:
            self._completed_streams += 1
        await ex.send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _stream(self, ex: _Exchange) -> None:
        opts = ex.opts
        fault = opts.fault
        pieces = self._content(ex)
        chunk_id, created = self._new_id(), int(time.time())
        bad = fault == "fault-bad-sse"

        def event(delta: dict[str, Any], finish: str | None, nl: bytes = b"\n\n") -> bytes:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": ex.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            text = json.dumps(chunk, ensure_ascii=not bad, separators=(",", ":"))
            return b"data: " + text.encode() + nl

        async def body(data: bytes) -> None:
            await ex.send({"type": "http.response.body", "body": data, "more_body": True})

        async def pause(index: int) -> None:
            if opts.delay_ms:
                if index:
                    await asyncio.sleep(opts.delay_ms / 1000)
            else:
                await asyncio.sleep(0)  # let a pending disconnect be noticed

        limit = len(pieces)
        if fault == "fault-reset":
            limit = min(limit, DEFAULT_RESET_AFTER if opts.fault_arg is None else opts.fault_arg)
        elif fault == "fault-inband-error":
            limit = min(limit, 2)

        await self._start_stream(ex)
        if bad:
            await body(b": ping\r\n\r\n")
        for i in range(limit):
            await pause(i)
            delta: dict[str, Any] = (
                {"role": "assistant", "content": pieces[i]} if i == 0 else {"content": pieces[i]}
            )
            if not bad:
                await body(event(delta, None))
            elif pieces[i] == BAD_SSE_TEXT:
                data = event(delta, None)
                cut = data.index("🙂".encode()) + 2  # inside the 4-byte character
                await body(data[:cut])
                await asyncio.sleep(0.02)  # make it two reads on the client side
                await body(data[cut:])
            elif i == 0:
                await body(event(delta, None, b"\r\n\r\n"))
                await body(b"event: foo\r\n\r\ndata: not json\r\n\r\n")
            else:
                await body(event(delta, None, b"\r\n\r\n" if i % 2 else b"\n\n"))

        if fault == "fault-reset":
            raise _Abort
        if fault == "fault-inband-error":
            err = _error("in-band failure", "server_error")
            await self._end_stream(ex, b"data: " + _dumps(err) + b"\n\n")
            return
        if fault == "fault-eof":
            await self._end_stream(ex, b"")
            return
        await pause(limit)
        await body(event({}, "stop"))
        tail = b""
        if ex.include_usage:
            usage_chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": ex.model,
                "choices": [],
                "usage": self._usage(ex, len(pieces)),
            }
            tail = b"data: " + _dumps(usage_chunk) + b"\n\n"
        await self._end_stream(ex, tail + (b"data: [DONE]\r\n\r\n" if bad else b"data: [DONE]\n\n"))

    async def _trickle(self, ex: _Exchange) -> None:
        interval = (ex.opts.fault_arg or DEFAULT_TRICKLE_MS) / 1000
        if ex.stream:
            await self._start_stream(ex)
            byte = b":"
        else:
            await _start(ex, 200, b"application/json", [])
            byte = b" "
        while True:
            await ex.send({"type": "http.response.body", "body": byte, "more_body": True})
            await asyncio.sleep(interval)

    async def _big(self, ex: _Exchange) -> None:
        size = (ex.opts.fault_arg or DEFAULT_BIG_MB) * 1024 * 1024
        head = (
            _dumps(
                {
                    "id": self._new_id(),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": ex.model,
                }
            )[:-1]
            + b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
        )
        tail = b'"},"finish_reason":"stop"}],"usage":' + _dumps(self._usage(ex, 1)) + b"}"
        await _start(ex, 200, b"application/json", [])
        await ex.send({"type": "http.response.body", "body": head, "more_body": True})
        remaining = max(0, size - len(head) - len(tail))
        while remaining > 0:
            piece = _PIECE if remaining >= len(_PIECE) else _PIECE[:remaining]
            remaining -= len(piece)
            await ex.send({"type": "http.response.body", "body": piece, "more_body": True})
            await asyncio.sleep(0)
        ex.finished = True
        await ex.send({"type": "http.response.body", "body": tail, "more_body": False})


# --------------------------------------------------------------------------- ASGI helpers


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _start(
    ex: _Exchange, status: int, content_type: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    await ex.send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *headers],
        }
    )


async def _respond(
    ex: _Exchange,
    status: int,
    payload: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await _start(ex, status, content_type, [(b"content-length", b"%d" % len(payload)), *headers])
    ex.finished = True
    await ex.send({"type": "http.response.body", "body": payload, "more_body": False})


async def _json(
    ex: _Exchange, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await _respond(ex, status, _dumps(obj), b"application/json", headers)


async def _drop_connection(ex: _Exchange, watch: asyncio.Future[None]) -> None:
    """Close the TCP connection mid-response (uvicorn exposes the transport on its `send`)."""
    transport = getattr(getattr(ex.send, "__self__", None), "transport", None)
    if transport is None:  # not uvicorn: an exception makes the server drop the connection
        raise ConnectionAbortedError("upstream_server: dropping the connection")
    ex.finished = True  # ours, not a client disconnect
    transport.close()  # flushes what was sent, then FIN without the chunked terminator
    # Wait until uvicorn has seen the connection go, else it would answer a 500 itself.
    try:
        await asyncio.wait_for(watch, timeout=5)
    except (TimeoutError, asyncio.CancelledError):
        transport.abort()


# --------------------------------------------------------------------------- serving


def _config(app: UpstreamApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        loop=LOOP,
        http=HTTP,
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: UpstreamApp, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._app = app
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._app.close()


class _ThreadedServer(_Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


class UpstreamServer:
    """The upstream in a background thread: `with UpstreamServer() as up: up.url ...`."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, max_records: int = MAX_RECORDS
    ) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.app = UpstreamApp(max_records=max_records)
        self._server: _ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 15.0) -> UpstreamServer:
        sock = _bind(self.host, self.port)
        self._sock = sock
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        server = _ThreadedServer(_config(self.app), self.app)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="upstream-server", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the upstream test server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.app.close()
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests (method, path, query, headers, body, time), newest last."""
        return self.app.requests()

    def stats(self) -> dict[str, int]:
        return self.app.stats()

    def reset(self) -> None:
        self.app.reset()

    def wait_stats(self, timeout: float = 1.0, **expected: int) -> dict[str, int]:
        """Poll `stats()` until every `name=value` holds or `timeout` passes; return the last."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if all(stats.get(k) == v for k, v in expected.items()):
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.01)


def start_subprocess(
    port: int | None = None, host: str = "127.0.0.1", timeout: float = 15.0
) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m tests.upstream_server` and wait for READY; returns (process, base url)."""
    cmd = [sys.executable, "-m", "tests.upstream_server", "--host", host, "--port", str(port or 0)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
        if not ready:
            stop_subprocess(proc)
            raise RuntimeError(f"the upstream subprocess did not print READY in {timeout}s")
        line = proc.stdout.readline()
        if not line:
            stop_subprocess(proc)
            raise RuntimeError(f"the upstream subprocess exited early ({proc.returncode})")
        if line.startswith("READY "):
            bound = int(line.split()[1])
            shown = f"[{host}]" if ":" in host else host
            return proc, f"http://{shown}:{bound}"


def stop_subprocess(proc: subprocess.Popen[str], timeout: float = 10.0) -> int:
    """SIGTERM (graceful, drops in-flight requests), SIGKILL after `timeout`; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    app = UpstreamApp()
    server = _Server(_config(app), app, on_started=lambda: print(f"READY {port}", flush=True))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
