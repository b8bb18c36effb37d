from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from registry import health
from registry.models import HealthCheckResult, HealthStatus
from registry.resolve import db_entry
from registry.tasks import sweep_health
from tests.upstream_server import UpstreamServer


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
