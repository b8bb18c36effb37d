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

REDIS_KEY = "gw:config-generation"

_lock = threading.Lock()
_sync_client: Any = None
_async_clients: dict[int, Any] = {}


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


def _async_redis() -> Any:
    """One asyncio Redis client per event loop."""
    import asyncio

    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(
            _redis_url(), socket_timeout=2, socket_connect_timeout=2
        )
        _async_clients[loop_id] = client
    return client


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


async def acurrent() -> int:
    if _redis_url():
        return int(await _async_redis().get(REDIS_KEY) or 0)
    from asgiref.sync import sync_to_async

    return await sync_to_async(_db_read, thread_sensitive=False)()


def _bump_now() -> None:
    if _redis_url():
        _sync_redis().incr(REDIS_KEY)
    else:
        _db_bump()
    from orgs import hotcache

    hotcache.clear()


def bump() -> None:
    """Call inside the writing transaction: the counter moves once it has committed."""
    transaction.on_commit(_bump_now)
