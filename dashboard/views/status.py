"""`GET /healthz`: whether this process can reach the parts it needs, for load balancers and
monitoring. No sign-in, no data: each part is "ok", "down" or "not configured"."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


def database_status() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        connection.close_if_unusable_or_obsolete()
        return "down"
    return "ok"


@functools.cache
def _redis_client(url: str) -> Any:
    """One pooled client per URL: a probe every few seconds reuses its connection. Timeouts are
    short so that a hung Redis answers "down" within a second."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def redis_status() -> str:
    url = getattr(settings, "REDIS_URL", "") or ""
    if not url:
        return "not configured"
    import redis

    try:
        _redis_client(url).ping()
    except redis.RedisError:
        return "down"
    return "ok"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    parts = {"database": database_status(), "redis": redis_status()}
    healthy = all(state != "down" for state in parts.values())
    body = {"status": "ok" if healthy else "unavailable", **parts}
    return JsonResponse(body, status=200 if healthy else 503)
