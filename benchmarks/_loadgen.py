"""A small HTTP/1.1 load generator on raw asyncio streams (cheap in CPU, unlike httpx/openai).

`run_load` opens N keep-alive connections to one host and has each send POST requests in a loop,
for a fixed duration or a fixed number of requests per connection. Responses are parsed by hand:
status line, headers, then a Content-Length or chunked body (or a body up to EOF). For every
request it records the latency (request written -> last body byte) and the time to the first
body chunk (for streams: the first chunk that contains `data:`; otherwise the time the response
head arrived). A request is an error when the status is not 200, when the body lacks the expected
end marker, or when the connection fails or times out (the connection is then opened anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Request", "percentile", "run_load", "run_until_complete"]

_counter = itertools.count()


@dataclass(frozen=True)
class Request:
    """One kind of request. `body` may contain `{n}`: replaced by a unique number per request
    (so that caches keyed on the body never answer)."""

    path: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    end_marker: bytes = b""  # the body must contain it (e.g. b"[DONE]"); b"" = no check

    def build(self, host: str, port: int) -> Callable[[], bytes]:
        head = f"POST {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "Content-Type: application/json\r\n"
        if self.stream:
            head += "Accept: text/event-stream\r\n"
        for name, value in self.headers:
            head += f"{name}: {value}\r\n"
        templated = "{n}" in self.body
        fixed = self.body.encode()
        prefix = head.encode()

        def make() -> bytes:
            body = self.body.replace("{n}", str(next(_counter))).encode() if templated else fixed
            return b"%sContent-Length: %d\r\n\r\n%s" % (prefix, len(body), body)

        return make


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    ttfc: list[float] = field(default_factory=list)  # seconds, successful requests
    elapsed: float = 0.0  # seconds from the start until the last connection finished
    error_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] += 1


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


class _BadResponse(Exception):
    pass


async def _read_response(
    reader: asyncio.StreamReader, stream: bool, t0: float
) -> tuple[int, bool, float, bytes]:
    """(status, keep-alive, time of the first chunk, body) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    t_head = time.perf_counter()
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise _BadResponse("bad status line")
    status = int(status_line[9:12])
    keep_alive = status_line.startswith(b"HTTP/1.1")
    length = -1
    chunked = False
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
    first: float | None = None if stream else t_head - t0
    if chunked:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            data = (await reader.readexactly(size + 2))[:-2]
            if first is None and b"data:" in data:
                first = time.perf_counter() - t0
            parts.append(data)
        body = b"".join(parts)
    elif length >= 0:
        body = await reader.readexactly(length) if length else b""
        if first is None and b"data:" in body:
            first = time.perf_counter() - t0
    elif status in (204, 304) or status < 200:
        body = b""
    else:  # no length: the body runs to EOF
        body = await reader.read(-1)
        keep_alive = False
        if first is None and b"data:" in body:
            first = time.perf_counter() - t0
    return status, keep_alive, (first if first is not None else float("nan")), body


async def _connection(
    host: str,
    port: int,
    request: Request,
    make: Callable[[], bytes],
    result: LoadResult,
    deadline: float | None,
    count: int | None,
    timeout: float,
    record: bool,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    sent = 0
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if count is not None and sent >= count:
                return
            sent += 1
            try:
                async with asyncio.timeout(timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    payload = make()
                    t0 = time.perf_counter()
                    writer.write(payload)
                    status, keep_alive, first, body = await _read_response(
                        reader, request.stream, t0
                    )
                    t1 = time.perf_counter()
            except (
                OSError,
                EOFError,
                TimeoutError,
                asyncio.LimitOverrunError,
                _BadResponse,
                ValueError,
            ) as exc:
                if record:
                    kind = type(exc).__name__
                    if isinstance(exc, asyncio.IncompleteReadError):
                        kind = "connection closed mid-response"
                    result.error(kind)
                if writer is not None:
                    writer.close()
                reader = writer = None
                if deadline is not None:
                    await asyncio.sleep(0.01)  # don't spin on a refused connection
                continue
            if not keep_alive:
                writer.close()
                reader = writer = None
            if not record:
                continue
            if status != 200:
                result.error(f"HTTP {status}: {body[:120]!r}")
            elif request.end_marker and request.end_marker not in body:
                result.error(f"no {request.end_marker.decode()!r} in the body: {body[-120:]!r}")
            else:
                result.ok += 1
                result.latencies.append(t1 - t0)
                result.ttfc.append(first)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def run_load(
    host: str,
    port: int,
    request: Request,
    *,
    concurrency: int,
    duration: float | None = None,
    per_connection: int | None = None,
    timeout: float = 60.0,
    record: bool = True,
    on_tick: Callable[[], None] | None = None,
    tick_interval: float = 0.1,
) -> LoadResult:
    """Drive `concurrency` keep-alive connections for `duration` seconds or `per_connection`
    requests each; `on_tick` is called every `tick_interval` seconds meanwhile (sampling)."""
    if duration is None and per_connection is None:
        raise ValueError("give a duration or a number of requests per connection")
    result = LoadResult()
    make = request.build(host, port)
    start = time.perf_counter()
    deadline = None if duration is None else time.monotonic() + duration
    ticker: asyncio.Task[None] | None = None
    if on_tick is not None:
        ticker = asyncio.create_task(_tick(on_tick, tick_interval))
    try:
        await asyncio.gather(
            *(
                _connection(
                    host, port, request, make, result, deadline, per_connection, timeout, record
                )
                for _ in range(concurrency)
            )
        )
    finally:
        result.elapsed = time.perf_counter() - start
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return result


async def _tick(callback: Callable[[], None], interval: float) -> None:
    while True:
        callback()
        await asyncio.sleep(interval)


def run_until_complete(coro: object) -> LoadResult:
    """Run a `run_load(...)` coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]
