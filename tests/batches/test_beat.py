"""Health checks that run by themselves: the worker's embedded beat sweeps `periodic` models
(every 10 s, `CELERY_BEAT_SCHEDULE["sweep-health"]`) with nothing in the test calling the sweep."""

from __future__ import annotations

from registry.models import HealthCheckResult, HealthStatus
from tests.batches.conftest import wait_until


def test_beat_probes_periodic_models_on_its_own(world, worker, make_model, upstream):
    periodic = {"mode": "periodic", "intervalSeconds": 1, "path": "/health"}
    up = make_model(world.org_a, "acme:beat-up", baseUrl=upstream.url + "/v1", healthCheck=periodic)
    down = make_model(
        world.org_a,
        "acme:beat-down",
        baseUrl=upstream.url + "/v1",
        healthCheck={**periodic, "path": "/health/503"},
    )
    make_model(world.org_a, "acme:beat-off", baseUrl=upstream.url + "/v1")

    def probed(model, times):
        rows = HealthCheckResult.objects.filter(target=model.health_key, trigger="periodic")
        return rows.count() >= times

    # Two sweeps of beat (10 s apart) probe each periodic model twice.
    wait_until(lambda: probed(up, 2) and probed(down, 2), timeout=60, interval=0.5)
    assert HealthStatus.objects.get(target=up.health_key).is_available is True
    status = HealthStatus.objects.get(target=down.health_key)
    assert status.is_available is False and "HTTP 503" in status.error
    paths = [r["path"] for r in upstream.requests()]
    assert set(paths) == {"/health", "/health/503"}  # the model without a check is never probed
