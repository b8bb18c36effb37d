"""Health checks (api-contract.md §5.9): on demand, periodic sweeps and preflight probes.

Every probe goes through `registry.upstream.probe`. A model is probed by one worker at a time
(a cache lock: Redis in production), and each result is kept as history for the dashboard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone

from registry import upstream
from registry.cluster import get_cluster_registry
from registry.models import HealthCheckResult, HealthStatus, RegistryModel
from registry.resolve import Entry, Route, cluster_entry, db_entry

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_MS = 5000


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
    """Probe a model now and store the result as its health and in its history. If another
    worker is probing it, wait for that probe to finish, then probe (a fresh result)."""
    result = probe_model(
        entry.health_key, entry.full_definition(), trusted=entry.source == "yaml", trigger=trigger
    )
    assert result is not None  # only `wait="skip"` returns None
    return result


# ---------------------------------------------------------------------------------------------
# The per-model probe lock
#
# Every probe of a model (periodic, preflight, manual) goes through `probe_model`, which holds
# `health-lock:<health_key>` in the cache (Redis SET NX EX when REDIS_URL is set, so it holds
# across processes) while it probes. The lock lives a little longer than the probe can take, so
# a holder that dies frees it by expiry; it is released only by its holder (token compare).
# Each finished probe is also published under `health-result:<health_key>` so that callers
# waiting on the lock can use it instead of probing again.

LOCK_MARGIN_SECONDS = 30  # DNS, storing the result: on top of the probe's own timeout
POLL_SECONDS = 0.05
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _lock_key(health_key: str) -> str:
    return f"health-lock:{health_key}"


def _result_key(health_key: str) -> str:
    return f"health-result:{health_key}"


def timeout_ms_of(definition: dict[str, Any]) -> int:
    return int((definition.get("healthCheck") or {}).get("timeoutMs") or DEFAULT_TIMEOUT_MS)


def lock_seconds(timeout_ms: int) -> int:
    """How long a probe lock lives: longer than the probe can take (it is bounded by timeoutMs)."""
    return math.ceil(timeout_ms / 1000) + LOCK_MARGIN_SECONDS


def acquire_lock(health_key: str, seconds: int) -> str | None:
    """Take the probe lock of a model for `seconds` (the holder's token), or None if held."""
    token = uuid.uuid4().hex
    return token if cache.add(_lock_key(health_key), token, timeout=seconds) else None


def release_lock(health_key: str, token: str) -> None:
    """Free the lock if it is still ours (it may have expired and been taken by another)."""
    key = _lock_key(health_key)
    backend = caches["default"]
    if isinstance(backend, RedisCache):  # compare and delete in one step
        full_key = backend.make_and_validate_key(key)
        client = backend._cache.get_client(full_key, write=True)
        client.eval(_RELEASE_SCRIPT, 1, full_key, backend._cache._serializer.dumps(token))
        return
    if cache.get(key) == token:
        cache.delete(key)


def _to_dict(result: upstream.ProbeResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def _from_dict(value: Any) -> upstream.ProbeResult | None:
    if not isinstance(value, dict):
        return None
    try:
        return upstream.ProbeResult(**value)
    except TypeError:
        return None


def _published_since(health_key: str, since_ms: int) -> upstream.ProbeResult | None:
    """The result of a probe that finished at or after `since_ms`, if one was published."""
    value = cache.get(_result_key(health_key))
    if isinstance(value, dict) and value.get("finished_ms", 0) >= since_ms:
        return _from_dict(value.get("result"))
    return None


@dataclass
class _Probe:
    """One call of `probe_model`: `attempt()` until it is done, sleeping in between."""

    health_key: str
    definition: dict[str, Any]
    trusted: bool
    trigger: str
    wait: Literal["skip", "join", "after"]
    reuse: Callable[[], upstream.ProbeResult | None] | None = None
    needed: Callable[[], bool] | None = None
    on_result: Callable[[upstream.ProbeResult], None] | None = None
    lock_ttl: int = field(init=False)
    wait_seconds: float = field(init=False)
    started_ms: int = field(init=False)
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        timeout_ms = timeout_ms_of(self.definition)
        self.lock_ttl = lock_seconds(timeout_ms)
        self.wait_seconds = {"skip": 0.0, "join": timeout_ms / 1000 + 1}.get(
            self.wait, self.lock_ttl + 1
        )
        self.started_ms = upstream.now_ms()
        self.deadline = time.monotonic() + self.wait_seconds

    def attempt(self) -> tuple[bool, upstream.ProbeResult | None]:
        """(True, result) when done (result None: skipped); (False, None): wait and retry."""
        token = acquire_lock(self.health_key, self.lock_ttl)
        if token is not None:
            try:
                return True, self._probe_locked()
            finally:
                try:
                    release_lock(self.health_key, token)
                except Exception:  # it expires by itself
                    logger.warning("could not release the health lock of %s", self.health_key)
        if self.wait == "skip":
            return True, None
        if self.wait == "join":
            if self.reuse is not None and (reused := self.reuse()) is not None:
                return True, reused
            if (published := _published_since(self.health_key, self.started_ms)) is not None:
                return True, published
        if time.monotonic() >= self.deadline:
            return True, self._give_up()
        return False, None

    def _probe_locked(self) -> upstream.ProbeResult | None:
        if self.needed is not None and not self.needed():
            return None
        if self.reuse is not None and (reused := self.reuse()) is not None:
            return reused
        if self.wait == "join" and (
            published := _published_since(self.health_key, self.started_ms)
        ):
            return published  # the probe we waited for finished as the lock came free
        result = run_probe(self.definition, trusted=self.trusted)
        cache.set(
            _result_key(self.health_key),
            {"finished_ms": upstream.now_ms(), "result": _to_dict(result)},
            self.lock_ttl,
        )
        if self.on_result is not None:
            self.on_result(result)
        try:
            record(self.health_key, result, trigger=self.trigger)
        except Exception:
            if self.trigger != "preflight":
                raise
            logger.exception("could not store the preflight result of %s", self.health_key)
        return result

    def _give_up(self) -> upstream.ProbeResult:
        # Still locked at the deadline: another worker took the lock again meanwhile (or, for a
        # preflight, its probe outlived the timeout). Use a result that finished while we
        # waited rather than probing alongside it.
        published = _published_since(self.health_key, self.started_ms)
        if published is not None:
            return published
        logger.warning(
            "health probe of %s: the lock stayed held for %.0f s",
            self.health_key,
            self.wait_seconds,
        )
        return _failed("another health check of this model is still running; try again shortly")


def probe_model(
    health_key: str,
    definition: dict[str, Any],
    *,
    trusted: bool,
    trigger: str,
    wait: Literal["skip", "join", "after"] = "after",
    reuse: Callable[[], upstream.ProbeResult | None] | None = None,
    needed: Callable[[], bool] | None = None,
    on_result: Callable[[upstream.ProbeResult], None] | None = None,
) -> upstream.ProbeResult | None:
    """Probe a model while holding its lock, store the result (health, history) and publish it.
    Every probe of a model goes through here (or `aprobe_model`).

    When another worker holds the lock, `wait` says what to do:
    - "skip" (periodic sweeps): return None at once;
    - "join" (preflight): wait, up to the probe timeout, for the in-flight probe's result and use
      it (or probe if the lock frees without a result);
    - "after" (manual checks): wait for the lock, up to its lifetime, then probe: a fresh result.
    Under the lock, `reuse()` may return a result that makes the probe unnecessary (a preflight
    result another worker has just cached), `needed()` False skips the probe (None), and
    `on_result(result)` runs before the lock is released (to cache a preflight result).
    """
    return _run(_Probe(health_key, definition, trusted, trigger, wait, reuse, needed, on_result))


def _run(probe: _Probe) -> upstream.ProbeResult | None:
    while True:
        done, result = probe.attempt()
        if done:
            return result
        time.sleep(POLL_SECONDS)


async def _arun(probe: _Probe) -> upstream.ProbeResult | None:
    """`probe_model` from async code: waits on the event loop, not in a worker thread."""
    from orgs.asyncdb import run_db

    while True:
        done, result = await run_db(probe.attempt)
        if done:
            return result
        await asyncio.sleep(POLL_SECONDS)


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


def probe_with_lock(
    entry: Entry, *, trigger: str, now: datetime | None = None
) -> upstream.ProbeResult | None:
    """Probe unless another worker is probing this model right now, or has probed it since the
    due list was read (then None)."""
    hc = entry.full_definition().get("healthCheck") or {}
    interval = hc.get("intervalSeconds")

    def still_due() -> bool:
        if not interval:
            return True
        last = (
            HealthStatus.objects.filter(target=entry.health_key)
            .values_list("checked_at", flat=True)
            .first()
        )
        return last is None or last + timedelta(seconds=int(interval)) <= (now or timezone.now())

    return probe_model(
        entry.health_key,
        entry.full_definition(),
        trusted=entry.source == "yaml",
        trigger=trigger,
        wait="skip",
        needed=still_due,
    )


def sweep(now: datetime | None = None) -> int:
    """Probe every model whose periodic check is due; returns how many were probed."""
    count = 0
    for entry in due_entries(now):
        try:
            if probe_with_lock(entry, trigger="periodic", now=now) is not None:
                count += 1
        except Exception:  # one broken model must not stop the sweep
            logger.exception("health probe of %s failed", entry.id)
    return count


# ---------------------------------------------------------------------------------------------
# Preflight


def _preflight_key(health_key: str) -> str:
    return f"health-preflight:{health_key}"


def _preflight_cached(health_key: str) -> upstream.ProbeResult | None:
    value = cache.get(_preflight_key(health_key))
    if value in ("1", "0"):  # the form written before results were cached whole
        return dataclasses.replace(_failed(""), is_available=value == "1", error=None)
    return _from_dict(value)


def _preflight_probe(route: Route) -> _Probe:
    ttl = int((route.health_check or {}).get("cacheTtlSeconds") or 0)

    def keep(result: upstream.ProbeResult) -> None:
        if ttl > 0:
            cache.set(_preflight_key(route.health_key), _to_dict(result), ttl)

    return _Probe(
        route.health_key,
        {**route.definition, "auth": route.auth},
        route.trusted,
        "preflight",
        "join",
        reuse=lambda: _preflight_cached(route.health_key),
        on_result=keep,
    )


def preflight(route: Route) -> bool:
    """Whether a `preflight` model is up, probing at most once per cacheTtlSeconds. Requests that
    miss the cache while another probes the model wait for that probe's result."""
    cached = _preflight_cached(route.health_key)
    if cached is not None:
        return cached.is_available
    result = _run(_preflight_probe(route))
    return result is not None and result.is_available


async def apreflight(route: Route) -> bool:
    from orgs.asyncdb import run_db

    cached = await run_db(_preflight_cached, route.health_key)
    if cached is not None:
        return cached.is_available
    result = await _arun(_preflight_probe(route))
    return result is not None and result.is_available
