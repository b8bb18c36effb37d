"""Health checks (api-contract.md §5.9): on demand, periodic sweeps and preflight probes.

Every probe goes through `registry.upstream.probe`. A model is probed by one worker at a time
(a cache lock: Redis in production), and each result is kept as history for the dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from registry import upstream
from registry.cluster import get_cluster_registry
from registry.models import HealthCheckResult, HealthStatus, RegistryModel
from registry.resolve import Entry, Route, cluster_entry, db_entry

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_MS = 5000
LOCK_SECONDS = 120


def history_length() -> int:
    return int(getattr(settings, "HEALTH_HISTORY_LENGTH", 50))


@dataclass(frozen=True)
class ProbeTarget:
    url: str | None
    method: str
    timeout_ms: int
    headers: dict[str, str]


def probe_target(definition: dict[str, Any]) -> ProbeTarget:
    """What to probe for a definition holding real secrets: its healthCheck path or url, else
    the OpenAI-compatible `GET {baseUrl}/models`. Auth headers go only to the model's origin."""
    base_url = definition.get("baseUrl")
    hc = definition.get("healthCheck") or {}
    method = hc.get("method") or "GET"
    timeout_ms = hc.get("timeoutMs") or DEFAULT_TIMEOUT_MS
    if "url" in hc:
        url: str | None = hc["url"]
    elif hc.get("path") and base_url:
        url = upstream.join_health_url(base_url, hc["path"])
    elif base_url:
        url = upstream.join_health_url(base_url, "models")
    else:
        url = None
    headers: dict[str, str] = {}
    if url and base_url and upstream.same_origin(url, base_url):
        headers = upstream.build_auth_headers(definition["auth"])
    return ProbeTarget(url=url, method=method, timeout_ms=timeout_ms, headers=headers)


def _failed(error: str) -> upstream.ProbeResult:
    return upstream.ProbeResult(
        is_available=False,
        checked_at_ms=upstream.now_ms(),
        error=error,
        latency_ms=None,
        status_code=None,
    )


def run_probe(definition: dict[str, Any], *, trusted: bool) -> upstream.ProbeResult:
    """Probe without storing anything (also used by the dashboard's "test connection")."""
    try:
        target = probe_target(definition)
    except upstream.UpstreamAuthError as exc:
        return _failed(str(exc))
    except upstream.UpstreamURLError as exc:
        return _failed(f"blocked: {exc.reason}")
    if target.url is None:
        return _failed("nothing to probe: the model has no baseUrl or healthCheck url")
    return upstream.probe(
        target.url,
        method=target.method,
        timeout_ms=target.timeout_ms,
        headers=target.headers,
        trusted=trusted,
    )


def record(health_key: str, result: upstream.ProbeResult, *, trigger: str) -> HealthStatus:
    checked_at = datetime.fromtimestamp(result.checked_at_ms / 1000, tz=UTC)
    status, _ = HealthStatus.objects.update_or_create(
        target=health_key,
        defaults={
            "is_available": result.is_available,
            "checked_at": checked_at,
            "error": result.error,
            "latency_ms": result.latency_ms,
        },
    )
    HealthCheckResult.objects.create(
        target=health_key,
        is_available=result.is_available,
        checked_at=checked_at,
        latency_ms=result.latency_ms,
        status_code=result.status_code,
        error=result.error,
        trigger=trigger,
    )
    keep = list(
        HealthCheckResult.objects.filter(target=health_key).values_list("pk", flat=True)[
            : history_length()
        ]
    )
    if len(keep) >= history_length():
        HealthCheckResult.objects.filter(target=health_key, pk__lt=min(keep)).delete()
    return status


def check_health(entry: Entry, *, trigger: str = "manual") -> upstream.ProbeResult:
    """Probe a model now and store the result as its health and in its history."""
    result = run_probe(entry.full_definition(), trusted=entry.source == "yaml")
    record(entry.health_key, result, trigger=trigger)
    return result


# ---------------------------------------------------------------------------------------------
# Periodic sweeps


def _periodic_entries() -> list[tuple[Entry, int]]:
    """Every model with a periodic health check, with its interval in seconds."""
    out: list[tuple[Entry, int]] = []
    for model in get_cluster_registry().sorted_models:
        hc = model.definition.get("healthCheck") or {}
        if hc.get("mode") == "periodic":
            out.append((cluster_entry(model), int(hc["intervalSeconds"])))
    periodic = RegistryModel.objects.filter(
        definition__healthCheck__mode="periodic"
    ).select_related("org")
    for model in periodic:
        out.append((db_entry(model), int(model.definition["healthCheck"]["intervalSeconds"])))
    return out


def due_entries(now: datetime | None = None) -> list[Entry]:
    now = now or timezone.now()
    candidates = _periodic_entries()
    checked = dict(
        HealthStatus.objects.filter(target__in=[e.health_key for e, _ in candidates]).values_list(
            "target", "checked_at"
        )
    )
    due = []
    for entry, interval in candidates:
        last = checked.get(entry.health_key)
        if last is None or last + timedelta(seconds=interval) <= now:
            due.append(entry)
    return due


def _lock_key(health_key: str) -> str:
    return f"health-lock:{health_key}"


def probe_with_lock(entry: Entry, *, trigger: str) -> upstream.ProbeResult | None:
    """Probe unless another worker is probing this model right now (then None)."""
    key = _lock_key(entry.health_key)
    if not cache.add(key, "1", timeout=LOCK_SECONDS):
        return None
    try:
        return check_health(entry, trigger=trigger)
    finally:
        cache.delete(key)


def sweep(now: datetime | None = None) -> int:
    """Probe every model whose periodic check is due; returns how many were probed."""
    count = 0
    for entry in due_entries(now):
        try:
            if probe_with_lock(entry, trigger="periodic") is not None:
                count += 1
        except Exception:  # one broken model must not stop the sweep
            logger.exception("health probe of %s failed", entry.id)
    return count


# ---------------------------------------------------------------------------------------------
# Preflight


def _preflight_cached(health_key: str) -> bool | None:
    value = cache.get(f"health-preflight:{health_key}")
    return None if value is None else value == "1"


def preflight(route: Route) -> bool:
    """Whether a `preflight` model is up, probing at most once per cacheTtlSeconds."""
    hc = route.health_check or {}
    cached = _preflight_cached(route.health_key)
    if cached is not None:
        return cached
    definition = {**route.definition, "auth": route.auth}
    result = run_probe(definition, trusted=route.trusted)
    try:
        record(route.health_key, result, trigger="preflight")
    except Exception:
        logger.exception("could not store the preflight result of %s", route.model_id)
    ttl = int(hc.get("cacheTtlSeconds") or 0)
    if ttl > 0:
        cache.set(f"health-preflight:{route.health_key}", "1" if result.is_available else "0", ttl)
    return result.is_available


async def apreflight(route: Route) -> bool:
    from orgs.asyncdb import run_db

    return await run_db(preflight, route)
