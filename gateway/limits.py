"""Request-rate limits (a model's `rpm` and its `rateLimits`), held in Redis so they count across
processes and hosts; in local memory when REDIS_URL is unset (one process).

Each limit is a sliding window log: a request is admitted only if every window it falls in still
has room, and all windows are charged in one atomic step, so a refused request uses no quota.
While Redis is unreachable the gateway fails closed (503): a gateway in front of paid upstreams
should not run unlimited.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from orgs.auth import Caller
from orgs.errors import RateLimited, ServiceUnavailable
from orgs.perloop import PerLoop
from registry.resolve import Route

# Redis's own clock stamps every request, so that processes and hosts with skewed clocks share
# one timeline (ARGV[1], the caller's clock, is kept for the argument layout only).
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[2]
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = window
    if oldest[2] then wait = tonumber(oldest[2]) + window - now end
    return {i, wait}
  end
end
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return {0, 0}
"""


@dataclass(frozen=True)
class Limit:
    key: str
    limit: int
    window_ms: int
    label: str
    # A rule's `queue`: wait up to max_wait_ms for room, with at most max_depth requests waiting
    # (counted per process).
    max_depth: int = 0
    max_wait_ms: int = 0


def limits_for(route: Route, caller: Caller, user: str | None = None) -> list[Limit]:
    """The windows a request to `route` by `caller` counts against."""
    # Per model as stored: `db:<pk>` for an org's model (ids repeat across orgs), `yaml:<id>`.
    base = f"gw:rl:{route.health_key}"
    out: list[Limit] = []
    if route.rpm:
        out.append(Limit(f"{base}:rpm", route.rpm, 60_000, f"{route.rpm} requests per minute"))
    for index, rule in enumerate(route.rate_limits):
        scope = rule["scope"]
        window_ms = int(rule.get("duration") or 60) * 1000
        if scope == "global":
            subject = "all"
        elif scope == "org":
            subject = f"org:{caller.org.pk}"
        elif scope == "apiKey":
            subject = caller.principal
        elif scope == "user":
            subject = f"user:{user}" if user else caller.principal
        else:  # externalUser
            if not caller.on_behalf_of:
                continue
            subject = f"ext:{caller.org.pk}:{caller.on_behalf_of}"
        seconds = window_ms // 1000
        queue = rule.get("queue") or {}
        out.append(
            Limit(
                f"{base}:{index}:{scope}:{subject}",
                rule["rpm"],
                window_ms,
                f"{rule['rpm']} requests per {seconds} s ({scope})",
                max_depth=int(queue.get("maxDepth") or 0),
                max_wait_ms=int(queue.get("maxWaitMs") or 0),
            )
        )
    return out


class _LocalWindows:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}

    def take(self, limits: list[Limit], now_ms: float) -> tuple[int, float]:
        with self._lock:
            for index, limit in enumerate(limits, start=1):
                window = self._windows.setdefault(limit.key, deque())
                while window and window[0] <= now_ms - limit.window_ms:
                    window.popleft()
                if len(window) >= limit.limit:
                    return index, window[0] + limit.window_ms - now_ms
            for limit in limits:
                self._windows[limit.key].append(now_ms)
            return 0, 0.0

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


_local = _LocalWindows()


def _register_script() -> Any:
    from orgs.generation import _async_redis

    return _async_redis().register_script(_SCRIPT)


_scripts: PerLoop[Any] = PerLoop(_register_script)


def _script() -> Any:
    return _scripts.get()


async def _try(limits: list[Limit]) -> tuple[int, float]:
    """(0, 0) when admitted and charged; else (1-based index of the full window, ms to wait)."""
    now_ms = time.time() * 1000
    if not settings.REDIS_URL:
        return _local.take(limits, now_ms)
    args: list[Any] = [int(now_ms), uuid.uuid4().hex]
    for limit in limits:
        args += [limit.limit, limit.window_ms]
    try:
        index, wait_ms = await _script()(keys=[lim.key for lim in limits], args=args)
    except Exception as exc:  # redis.exceptions.RedisError and connection failures
        raise ServiceUnavailable(
            "rate limiter unavailable; try again shortly", headers={"Retry-After": "1"}
        ) from exc
    return int(index), float(wait_ms)


_waiting: dict[str, int] = {}


async def acquire(limits: list[Limit]) -> None:
    """Admit the request or raise RateLimited (429 with Retry-After). A full window whose rule
    has a `queue` makes the request wait for room instead, within the queue's bounds."""
    if not limits:
        return
    deadline: float | None = None
    queued_on: str | None = None
    try:
        while True:
            index, wait_ms = await _try(limits)
            if not index:
                return
            limit = limits[index - 1]
            now = time.monotonic()
            if (
                deadline is None
                and limit.max_wait_ms > 0
                and _waiting.get(limit.key, 0) < limit.max_depth
            ):
                deadline = now + limit.max_wait_ms / 1000
                queued_on = limit.key
                _waiting[limit.key] = _waiting.get(limit.key, 0) + 1
            if deadline is None or now + wait_ms / 1000 > deadline:
                retry_after = max(1, int((wait_ms + 999) // 1000))
                raise RateLimited(
                    f"rate limit exceeded: {limit.label}; retry after {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                )
            await asyncio.sleep(max(wait_ms / 1000, 0.01))
    finally:
        if queued_on is not None:
            _waiting[queued_on] -= 1


def reset_local() -> None:
    _local.reset()
