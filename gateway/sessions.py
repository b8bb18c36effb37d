"""Stream sessions of `POST /chat/completions/stream`: the response cache and resumption of §8.4.

A session runs the upstream call in its own task and keeps every encoded event, so that:
- a client that disconnects can come back with `x-last-chunk-index: N` and get the chunks after
  N, continuing live if the upstream is still running;
- the upstream keeps running for a grace window after the last client left, and is cancelled if
  nobody comes back by then;
- an identical request (same org, end user and body) within the cache window is answered from
  the finished session.

Sessions live in the process that started them. A reconnect that reaches another process finds
no session and gets a fresh answer without the chunks it already has (the contract's fallback).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings

from gateway.chat import (
    KEEPALIVE,
    KEEPALIVE_SECONDS,
    ORPC_DONE,
    ORPC_KEEPALIVE,
    UpstreamStreamError,
    orpc_error,
    orpc_message,
)
from registry.resolve import Route

MAX_SESSIONS = 2000


def cache_seconds() -> float:
    return float(getattr(settings, "CHAT_STREAM_CACHE_SECONDS", 600))


def grace_seconds() -> float:
    return float(getattr(settings, "CHAT_STREAM_RESUME_GRACE_SECONDS", 60))


def session_key(org_id: int, end_user: str | None, body: dict[str, Any], route: Route) -> str:
    """Same org, end user, request body and route (so an edited model is a new key)."""
    normal = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    target = [route.model_id, route.upstream_model, route.base_url, route.definition]
    text = json.dumps(
        [org_id, end_user or "", normal, target], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()


class StreamSession:
    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[bytes] = []
        self.terminal: bytes | None = None
        self.failed = False
        self.finished_at: float | None = None
        self.consumers = 0
        self.producer: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._grace: asyncio.TimerHandle | None = None

    def _notify(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    @property
    def reusable(self) -> bool:
        if self.failed:
            return False
        if self.finished_at is None:
            return True
        return time.monotonic() - self.finished_at < cache_seconds()

    async def produce(self, chunks: AsyncIterator[Any]) -> None:
        try:
            async for chunk in chunks:
                if chunk is KEEPALIVE:
                    continue
                self.events.append(orpc_message(len(self.events), chunk))
                self._notify()
            self.terminal = ORPC_DONE
        except UpstreamStreamError as exc:
            self.failed = True
            self.terminal = orpc_error(str(exc))
        except asyncio.CancelledError:
            self.failed = True
            self.terminal = orpc_error("the stream was cancelled")
            raise
        finally:
            self.finished_at = time.monotonic()
            self._notify()
            _finished(self)

    async def consume(self, after: int) -> AsyncIterator[bytes]:
        """Events with index > `after`, live until the session ends; keep-alives while idle."""
        self.consumers += 1
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        index = max(after + 1, 0)
        try:
            while True:
                while index < len(self.events):
                    yield self.events[index]
                    index += 1
                if self.terminal is not None:
                    yield self.terminal
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(self._changed), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ORPC_KEEPALIVE
        finally:
            self.consumers -= 1
            if self.consumers == 0 and self.terminal is None:
                self._schedule_cancel()

    def _schedule_cancel(self) -> None:
        grace = grace_seconds()
        if grace <= 0:
            self.cancel()
            return
        self._grace = asyncio.get_running_loop().call_later(grace, self._cancel_if_unattended)

    def _cancel_if_unattended(self) -> None:
        self._grace = None
        if self.consumers == 0:
            self.cancel()

    def cancel(self) -> None:
        if self.producer is not None and not self.producer.done():
            self.producer.cancel()


_sessions: OrderedDict[str, StreamSession] = OrderedDict()


def _finished(session: StreamSession) -> None:
    if session.failed or cache_seconds() <= 0:
        if _sessions.get(session.key) is session:
            del _sessions[session.key]
        return
    asyncio.get_running_loop().call_later(cache_seconds(), _expire, session)


def _expire(session: StreamSession) -> None:
    if _sessions.get(session.key) is session:
        del _sessions[session.key]


def find(key: str) -> StreamSession | None:
    session = _sessions.get(key)
    if session is not None and not session.reusable:
        del _sessions[key]
        return None
    return session


def start(key: str, chunks_factory: Callable[[], AsyncIterator[Any]]) -> StreamSession:
    session = StreamSession(key)
    while len(_sessions) >= MAX_SESSIONS:
        _, oldest = _sessions.popitem(last=False)
        if oldest.consumers == 0:
            oldest.cancel()
    _sessions[key] = session
    session.producer = asyncio.get_running_loop().create_task(session.produce(chunks_factory()))
    return session


def reset() -> None:
    """Cancel and forget every session (tests; callable from any thread)."""
    for session in list(_sessions.values()):
        task = session.producer
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)
    _sessions.clear()
