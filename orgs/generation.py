"""A config generation counter that keeps in-process caches from ever going stale.

Hot-path caches (API keys, model resolution) live in each process. Every write that could change
their answer (a key revoked, a model edited, a grant or an auto model changed) bumps one counter
after its transaction commits; every request reads the counter first (one Redis GET, or one
indexed row read without Redis) and drops the process's caches when it moved. So a change takes
effect on the very next request in every process and on every host.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.db import transaction

from orgs.perloop import PerLoop

REDIS_KEY = "gw:config-generation"

_lock = threading.Lock()
_sync_client: Any = None


def _redis_url() -> str:
    return getattr(settings, "REDIS_URL", "") or ""


def _sync_redis() -> Any:
    global _sync_client
    if _sync_client is None:
        import redis

        with _lock:
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(
                    _redis_url(), socket_timeout=2, socket_connect_timeout=2
                )
    return _sync_client


def _new_async_redis() -> Any:
    import redis.asyncio

    # A bounded pool that waits for a free connection (briefly) instead of failing when
    # thousands of requests arrive at once.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        _redis_url(),
        max_connections=64,
        timeout=5,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    return redis.asyncio.Redis(connection_pool=pool)


_async_clients: PerLoop[Any] = PerLoop(_new_async_redis)


def _async_redis() -> Any:
    """One asyncio Redis client per event loop."""
    return _async_clients.get()


def _db_read() -> int:
    from orgs.models import ConfigGeneration

    value = ConfigGeneration.objects.filter(pk=1).values_list("value", flat=True).first()
    return int(value or 0)


def _db_bump() -> None:
    from django.db.models import F

    from orgs.models import ConfigGeneration

    updated = ConfigGeneration.objects.filter(pk=1).update(value=F("value") + 1)
    if not updated:
        ConfigGeneration.objects.get_or_create(pk=1, defaults={"value": 1})


def current() -> int:
    if _redis_url():
        return int(_sync_redis().get(REDIS_KEY) or 0)
    return _db_read()


class _NextRead:
    """Coalesces concurrent reads of the counter without ever answering a request with a value
    read before it arrived: requests that arrive while no read has been sent yet share the next
    read, and at most one read is in flight at a time. A burst of a thousand requests costs a
    handful of round trips instead of a thousand."""

    def __init__(self) -> None:
        import asyncio

        self.waiting: asyncio.Future[int] | None = None
        self.lock = asyncio.Lock()

    async def get(self) -> int:
        import asyncio

        future = self.waiting
        if future is None:
            future = self.waiting = asyncio.get_running_loop().create_future()
            task = asyncio.get_running_loop().create_task(self._read(future))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
        return await asyncio.shield(future)

    async def _read(self, future: Any) -> None:
        async with self.lock:
            if self.waiting is future:
                self.waiting = None  # later arrivals wait for a read sent after them
            try:
                value = await _read_now()
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: every waiter re-raises it
            else:
                future.set_result(value)


_readers: PerLoop[_NextRead] = PerLoop(_NextRead)
_tasks: set[Any] = set()


async def acurrent() -> int:
    return await _readers.get().get()


async def _read_now() -> int:
    if _redis_url():
        try:
            return int(await _async_redis().get(REDIS_KEY) or 0)
        except Exception as exc:  # redis errors: refuse rather than serve stale config
            from orgs.errors import ServiceUnavailable

            raise ServiceUnavailable(
                "the configuration cache (Redis) is unavailable; try again shortly",
                headers={"Retry-After": "1"},
            ) from exc
    from orgs.asyncdb import run_db

    return await run_db(_db_read)


def _bump_now() -> None:
    if _redis_url():
        _sync_redis().incr(REDIS_KEY)
    else:
        _db_bump()
    from orgs import hotcache

    hotcache.clear()


def bump() -> None:
    """Call inside the writing transaction: the counter moves once it has committed.

    With Redis it also moves right away, inside the transaction: if Redis cannot be reached the
    write fails (and rolls back) instead of committing a change that no process would notice.
    """
    if _redis_url():
        _sync_redis().incr(REDIS_KEY)
    transaction.on_commit(_bump_now)
