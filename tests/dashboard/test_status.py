"""GET /healthz: the parts this process needs, for load balancers (I2)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import database_unreachable, free_port


def test_healthy(client: Any, db: Any, settings: Any) -> None:
    settings.REDIS_URL = ""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "not configured"}
    assert "no-cache" in response["Cache-Control"]


def test_redis_down_is_503_naming_it(client: Any, db: Any, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "redis": "down"}


@pytest.mark.django_db(transaction=True)
def test_database_down_is_503_naming_it(client: Any, settings: Any) -> None:
    settings.REDIS_URL = ""
    with database_unreachable():
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "database": "down",
        "redis": "not configured",
    }
    assert client.get("/healthz").status_code == 200  # back as soon as the database is


def test_redis_up_is_ok_and_probes_reuse_one_connection(
    client: Any, db: Any, settings: Any
) -> None:
    import redis
    from django.conf import settings as live

    from dashboard.views.status import _redis_client

    url = live.REDIS_URL or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError:
        pytest.skip("no Redis on this machine")
    settings.REDIS_URL = url
    assert client.get("/healthz").json()["redis"] == "ok"
    connection_id = _redis_client(url).client_id()
    for _ in range(20):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    assert _redis_client(url).client_id() == connection_id  # one connection served every probe
