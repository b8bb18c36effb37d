"""Turn `Authorization: Bearer …` and `X-On-Behalf-Of` into a `Caller`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from orgs.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from orgs.models import ApiKey, Org, Role, hash_key

MAX_ON_BEHALF_OF = 256
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-.~+/=]{8,512}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# last_used_at is written at most this often per key, so the hot path does not write every time.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Caller:
    """Who acts, in which org: an API key, or a signed-in dashboard user (`user`, with the role
    of their membership; superusers are cluster admins)."""

    org: Org
    key: ApiKey | None = None
    on_behalf_of: str | None = None
    user: Any = None
    role: str = ""
    cluster_admin: bool = False

    @classmethod
    def for_key(cls, key: ApiKey, on_behalf_of: str | None = None) -> Caller:
        return cls(
            org=key.org,
            key=key,
            on_behalf_of=on_behalf_of,
            role=key.role,
            cluster_admin=key.cluster_admin,
        )

    @classmethod
    def for_user(cls, user: Any, org: Org, role: str) -> Caller:
        return cls(org=org, user=user, role=role, cluster_admin=bool(user.is_superuser))

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN or self.cluster_admin and self.user is not None

    @property
    def is_cluster_admin(self) -> bool:
        return self.cluster_admin

    @property
    def api_key_id(self) -> int | None:
        return self.key.pk if self.key is not None else None

    @property
    def principal(self) -> str:
        """A stable id of the key or user, for per-key rate limits."""
        return f"key:{self.key.pk}" if self.key is not None else f"user:{self.user.pk}"

    @property
    def actor(self) -> str:
        """Recorded as `set_by` / `granted_by` and in the audit trail."""
        base = self.key.actor if self.key is not None else f"user:{self.user.get_username()}"
        if self.on_behalf_of:
            return f"{self.on_behalf_of} via {base}"
        return base

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this operation requires an org admin API key")

    def require_cluster_admin(self) -> None:
        if not self.is_cluster_admin:
            raise PermissionDenied("this operation requires a cluster admin API key")


def parse_on_behalf_of(request: HttpRequest) -> str | None:
    raw = request.META.get("HTTP_X_ON_BEHALF_OF")
    if raw is None:
        return None
    # WSGI/ASGI hand headers over as latin-1 decoded text; recover the UTF-8 the client sent.
    try:
        value = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise InvalidRequest("X-On-Behalf-Of must be valid UTF-8", param="X-On-Behalf-Of") from None
    if not value.strip():
        raise InvalidRequest("X-On-Behalf-Of must not be empty", param="X-On-Behalf-Of")
    if len(value) > MAX_ON_BEHALF_OF:
        raise InvalidRequest(
            f"X-On-Behalf-Of must be at most {MAX_ON_BEHALF_OF} characters", param="X-On-Behalf-Of"
        )
    if _CONTROL_RE.search(value):
        raise InvalidRequest(
            "X-On-Behalf-Of must not contain control characters", param="X-On-Behalf-Of"
        )
    return value


def bearer_token(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationFailed("unsupported authorization scheme: use 'Bearer <key>'")
    token = token.strip()
    if not token:
        raise AuthenticationFailed("missing API key after 'Bearer'")
    if not _TOKEN_RE.match(token):
        raise AuthenticationFailed("invalid API key")
    return token


def _load_key(digest: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("org")
        .filter(key_hash=digest, revoked_at__isnull=True)
        .first()
    )


def _touch(key_id: int, when: object) -> None:
    ApiKey.objects.filter(pk=key_id).update(last_used_at=when)


def authenticate(request: HttpRequest) -> Caller:
    """The caller behind a request, or AuthenticationFailed. Never echoes the token."""
    key = _load_key(hash_key(bearer_token(request)))
    if key is None:
        raise AuthenticationFailed("invalid API key")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        _touch(key.pk, now)
        key.last_used_at = now
    return Caller.for_key(key, parse_on_behalf_of(request))


_last_touch: dict[int, float] = {}
_background: set[Any] = set()


async def aauthenticate(request: HttpRequest) -> Caller:
    """The hot-path twin of `authenticate`: keys are cached in process until the config
    generation moves, so a revoked key fails on the very next request (see orgs.generation)."""
    import asyncio
    import time

    from orgs import generation, hotcache
    from orgs.asyncdb import run_db

    token = bearer_token(request)
    on_behalf_of = parse_on_behalf_of(request)
    hotcache.sync(await generation.acurrent())
    digest = hash_key(token)
    key = hotcache.get("key", digest)
    if key is hotcache.MISSING:
        key = await run_db(_load_key, digest)
        hotcache.put("key", digest, key)
    if key is None:
        raise AuthenticationFailed("invalid API key")
    now = time.monotonic()
    if now - _last_touch.get(key.pk, -1e9) > LAST_USED_RESOLUTION.total_seconds():
        _last_touch[key.pk] = now
        task = asyncio.ensure_future(run_db(_touch, key.pk, timezone.now()))
        _background.add(task)
        task.add_done_callback(_background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return Caller.for_key(key, on_behalf_of)
