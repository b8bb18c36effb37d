"""`GET /healthz`: whether this process can reach the parts it needs, for load balancers and
monitoring. No sign-in, no data: each part is "ok", "down" or "not configured"."""

from __future__ import annotations

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


def redis_status() -> str:
    url = getattr(settings, "REDIS_URL", "") or ""
    if not url:
        return "not configured"
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        return "down"
    finally:
        client.close()
    return "ok"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    parts = {"database": database_status(), "redis": redis_status()}
    healthy = all(state != "down" for state in parts.values())
    body = {"status": "ok" if healthy else "unavailable", **parts}
    return JsonResponse(body, status=200 if healthy else 503)
