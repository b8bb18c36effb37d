from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.core.cache import cache
from django.utils import timezone

from registry import health
from registry.models import HealthCheckResult, HealthStatus
from registry.resolve import db_entry
from registry.tasks import sweep_health
from tests.upstream_server import ROOT, UpstreamServer


@pytest.fixture
def upstream(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


def periodic(path: str = "/health", interval: int = 60) -> dict:
    return {"mode": "periodic", "intervalSeconds": interval, "path": path}


def test_the_sweep_probes_due_periodic_models_only(world, make_model, upstream):
    up = make_model(world.org_a, "acme:up", baseUrl=upstream.url + "/v1", healthCheck=periodic())
    down = make_model(
        world.org_a, "acme:down", baseUrl=upstream.url + "/v1", healthCheck=periodic("/health/503")
    )
    make_model(world.org_a, "acme:off", baseUrl=upstream.url + "/v1", healthCheck={"mode": "off"})
    make_model(world.org_a, "acme:none", baseUrl=upstream.url + "/v1")

    assert sweep_health.apply().get() == 2
    statuses = {s.target: s for s in HealthStatus.objects.all()}
    assert set(statuses) == {up.health_key, down.health_key}
    assert statuses[up.health_key].is_available is True
    assert statuses[down.health_key].is_available is False
    assert "HTTP 503" in statuses[down.health_key].error
    assert sorted(r["path"] for r in upstream.requests()) == ["/health", "/health/503"]

    # Nothing is due again until the interval has passed.
    assert health.sweep() == 0
    assert health.sweep(now=timezone.now() + timedelta(seconds=61)) == 2
    assert HealthCheckResult.objects.filter(target=up.health_key, trigger="periodic").count() == 2


def test_one_probe_per_model_at_a_time(world, make_model, upstream):
    model = make_model(world.org_a, "acme:up", baseUrl=upstream.url + "/v1", healthCheck=periodic())
    cache.add(f"health-lock:{model.health_key}", "1", timeout=30)
    try:
        assert health.sweep() == 0
        assert upstream.requests() == []
    finally:
        cache.delete(f"health-lock:{model.health_key}")
    assert health.sweep() == 1


def test_history_keeps_the_newest_results(world, make_model, upstream, settings):
    settings.HEALTH_HISTORY_LENGTH = 3
    model = make_model(world.org_a, "acme:up", baseUrl=upstream.url + "/v1", healthCheck=periodic())
    entry = db_entry(model)
    for _ in range(5):
        health.check_health(entry)
    rows = HealthCheckResult.objects.filter(target=model.health_key)
    assert rows.count() == 3
    assert all(r.is_available and r.latency_ms is not None for r in rows)


def test_a_down_preflight_model_falls_back_or_is_unavailable(world, make_model, upstream, http):
    from tests.conftest import auth

    preflight = {"mode": "preflight", "path": "/health/503", "cacheTtlSeconds": 60}
    make_model(world.org_a, "acme:target", baseUrl=upstream.url + "/v1", modelId="chunks@2")
    make_model(
        world.org_a,
        "acme:guarded",
        baseUrl=upstream.url + "/v1",
        modelId="chunks@2",
        healthCheck=preflight,
        rerouteRules=[{"trigger": {"type": "error-fallback"}, "targetModelId": "acme:target"}],
    )
    make_model(
        world.org_a,
        "acme:alone",
        baseUrl=upstream.url + "/v1",
        modelId="chunks@2",
        healthCheck=preflight,
    )
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = http.post(
        "/api/v1/llm/chat/completions",
        json={**body, "model": "acme:guarded"},
        headers=auth(world.bob),
    )
    assert r.status_code == 200
    assert r.json()["model"] == "acme:target"
    assert r.headers["x-gateway-rerouted-from"] == "acme:guarded"

    r = http.post(
        "/api/v1/llm/chat/completions",
        json={**body, "model": "acme:alone"},
        headers=auth(world.bob),
    )
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 503
    # The result is cached for cacheTtlSeconds: a second request does not probe again.
    probes = sum(1 for q in upstream.requests() if q["path"] == "/health/503")
    http.post(
        "/api/v1/llm/chat/completions",
        json={**body, "model": "acme:alone"},
        headers=auth(world.bob),
    )
    assert sum(1 for q in upstream.requests() if q["path"] == "/health/503") == probes


# ---------------------------------------------------------------------------------------------
# One probe per model at a time (the probe lock), for every kind of probe

SLOW = "/health/delay@800"  # the loopback upstream answers this after 800 ms


def probes(upstream: UpstreamServer, path: str) -> list[dict]:
    return [q for q in upstream.requests() if q["path"] == path]


def chat(http, who, model: str):
    from tests.conftest import auth

    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return http.post("/api/v1/llm/chat/completions", json=body, headers=auth(who))


def in_thread(fn, *args):
    """Run `fn` in a thread with its own database connection; `.result()` joins it."""
    from django.db import connection

    def run():
        try:
            return fn(*args)
        finally:
            connection.close()

    pool = ThreadPoolExecutor(1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


@pytest.mark.parametrize("ttl", [0, 60])
def test_concurrent_preflight_misses_probe_the_model_once(
    world, make_model, upstream, live_url, ttl
):
    """Requests that miss the preflight cache while the model is being probed wait for that
    probe's result (also with cacheTtlSeconds 0, where nothing is cached)."""
    preflight = {"mode": "preflight", "path": SLOW, "cacheTtlSeconds": ttl}
    model = make_model(
        world.org_a,
        "acme:guarded",
        baseUrl=upstream.url + "/v1",
        modelId="chunks@2",
        healthCheck=preflight,
    )
    n = 5
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        with httpx.Client(base_url=live_url, timeout=15) as client:
            barrier.wait()
            return chat(client, world.bob, "acme:guarded").status_code

    with ThreadPoolExecutor(n) as pool:
        assert list(pool.map(one, range(n))) == [200] * n
    assert len(probes(upstream, SLOW)) == 1
    assert len([q for q in upstream.requests() if q["path"] == "/v1/chat/completions"]) == n
    rows = HealthCheckResult.objects.filter(target=model.health_key)
    assert [(r.trigger, r.is_available) for r in rows] == [("preflight", True)]


def test_a_healthy_preflight_model_is_probed_again_after_the_cache_ttl(
    world, make_model, upstream, http
):
    preflight = {"mode": "preflight", "path": "/health", "cacheTtlSeconds": 1}
    model = make_model(
        world.org_a,
        "acme:guarded",
        baseUrl=upstream.url + "/v1",
        modelId="chunks@2",
        healthCheck=preflight,
    )
    for _ in range(3):
        r = chat(http, world.bob, "acme:guarded")
        assert r.status_code == 200
        assert r.json()["model"] == "acme:guarded"
        assert "x-gateway-rerouted-from" not in r.headers
    assert len(probes(upstream, "/health")) == 1  # cached for cacheTtlSeconds

    time.sleep(1.2)
    assert chat(http, world.bob, "acme:guarded").status_code == 200
    assert len(probes(upstream, "/health")) == 2
    assert chat(http, world.bob, "acme:guarded").status_code == 200
    assert len(probes(upstream, "/health")) == 2
    triggers = HealthCheckResult.objects.filter(target=model.health_key)
    assert [r.trigger for r in triggers] == ["preflight", "preflight"]


def test_a_manual_check_during_a_periodic_probe_waits_for_it_then_probes(
    world, make_model, upstream, http
):
    """The manual check (API) returns a fresh result of its own, probed after the periodic one:
    the upstream never sees two probes of the model at once."""
    from tests.conftest import auth

    model = make_model(
        world.org_a, "acme:slow", baseUrl=upstream.url + "/v1", healthCheck=periodic(SLOW)
    )
    sweeping = in_thread(health.sweep)
    upstream.wait_stats(timeout=5, open_requests=1)  # the periodic probe is in flight

    start = time.monotonic()
    r = http.post(
        f"/api/v1/llm/models/registry/{model.registry_id}/health", headers=auth(world.alice)
    )
    assert r.status_code == 200
    assert r.json()["is_available"] is True
    assert sweeping.result(timeout=10) == 1
    assert time.monotonic() - start >= 0.8  # it waited for the periodic probe, then probed

    first, second = probes(upstream, SLOW)
    assert second["time"] >= first["time"] + 0.75  # the manual probe started after the first
    assert upstream.stats()["peak_open_requests"] == 1
    rows = HealthCheckResult.objects.filter(target=model.health_key).order_by("pk")
    assert [r.trigger for r in rows] == ["periodic", "manual"]
    assert r.json()["checked_at"] == int(rows[1].checked_at.timestamp() * 1000)


def test_a_preflight_during_a_manual_check_uses_its_result(world, make_model, upstream):
    """A preflight that misses the cache while a manual check is in flight uses that check's
    result instead of probing again."""
    from registry.resolve import resolve_route

    model = make_model(
        world.org_a,
        "acme:guarded",
        baseUrl=upstream.url + "/v1",
        healthCheck={"mode": "preflight", "path": SLOW, "cacheTtlSeconds": 0},
    )
    manual = in_thread(health.check_health, db_entry(model))
    upstream.wait_stats(timeout=5, open_requests=1)
    assert health.preflight(resolve_route(world.org_a, "acme:guarded")) is True
    assert manual.result(timeout=10).is_available is True
    assert len(probes(upstream, SLOW)) == 1
    assert upstream.stats()["peak_open_requests"] == 1


def test_a_lock_is_freed_by_its_holder_only_and_expires_after_a_crash(world, make_model, upstream):
    model = make_model(world.org_a, "acme:up", baseUrl=upstream.url + "/v1", healthCheck=periodic())
    token = health.acquire_lock(model.health_key, 1)
    assert token is not None
    assert health.acquire_lock(model.health_key, 1) is None
    health.release_lock(model.health_key, "not-the-holder")
    assert health.sweep() == 0
    assert upstream.requests() == []

    time.sleep(1.2)  # the holder "crashed": its lock expires
    assert health.sweep() == 1
    health.release_lock(model.health_key, token)  # a late release frees nothing of another's
    assert health.lock_seconds(600_000) > 600  # longer than any probe timeout


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")
def test_the_lock_holds_across_processes_with_redis(world, make_model, upstream):
    """Another process takes the lock (and dies without releasing it): this process's sweep
    skips the model, and a manual check waits for the lock to expire, then probes."""
    import redis

    model = make_model(world.org_a, "acme:up", baseUrl=upstream.url + "/v1", healthCheck=periodic())
    code = (
        "import django; django.setup()\n"
        "from registry import health\n"
        f"print(health.acquire_lock({model.health_key!r}, 2))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() not in ("", "None")
    taken = time.monotonic()

    raw = redis.Redis.from_url(os.environ["REDIS_URL"])  # a client of its own
    keys = raw.keys("*health-lock:*")
    assert len(keys) == 1 and 0 < raw.pttl(keys[0]) <= 2000

    assert health.sweep() == 0
    assert upstream.requests() == []
    result = health.check_health(db_entry(model))
    assert result.is_available is True
    assert time.monotonic() - taken >= 1.5  # it waited for the dead holder's lock to expire
    assert len(probes(upstream, "/health")) == 1
    assert raw.keys("*health-lock:*") == []  # released after the probe
