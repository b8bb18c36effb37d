"""Verbs that write org, key and audit rows. Each runs in one transaction."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs import generation
from orgs.errors import Conflict, InvalidRequest, NotFound
from orgs.models import SLUG_RE, VISIBLE_PREFIX_LEN, ApiKey, AuditEvent, Org, Role, hash_key


def record_audit(
    *,
    org: Org | None,
    actor: str,
    action: str,
    target: str = "",
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit row. Callers pass redacted values only: secrets never reach this table.

    Every audited write may change what the hot path answers, so it also moves the config
    generation (after commit)."""
    generation.bump()
    return AuditEvent.objects.create(
        org=org,
        org_slug=org.slug if org else "",
        actor=actor[:300],
        action=action,
        target=target[:300],
        changes=changes or {},
    )


def create_org(slug: str, name: str, *, actor: str = "system") -> Org:
    if not re.match(SLUG_RE, slug):
        raise InvalidRequest(
            "org slug must be 1-64 lowercase letters, digits and dashes", param="slug"
        )
    try:
        with transaction.atomic():
            org = Org.objects.create(slug=slug, name=name or slug)
            record_audit(
                org=org, actor=actor, action="org.created", target=slug, changes={"name": org.name}
            )
    except IntegrityError:
        raise Conflict(f"org {slug!r} already exists", param="slug") from None
    return org


@transaction.atomic
def issue_api_key(
    org: Org,
    *,
    role: str = Role.MEMBER,
    cluster_admin: bool = False,
    name: str = "",
    actor: str = "system",
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw token, which is shown this once and never stored."""
    if role not in Role.values:
        raise InvalidRequest(f"role must be one of {', '.join(Role.values)}", param="role")
    raw, prefix, digest = ApiKey.generate()
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=prefix,
        key_hash=digest,
        role=role,
        cluster_admin=cluster_admin,
        created_by=actor,
    )
    record_audit(
        org=org,
        actor=actor,
        action="key.issued",
        target=prefix,
        changes={"name": name, "role": role, "cluster_admin": cluster_admin},
    )
    return key, raw


@transaction.atomic
def revoke_api_key(key: ApiKey, *, actor: str = "system") -> ApiKey:
    key = ApiKey.objects.select_for_update().get(pk=key.pk)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        record_audit(
            org=key.org,
            actor=actor,
            action="key.revoked",
            target=key.prefix,
            changes={"name": key.name, "role": key.role, "cluster_admin": key.cluster_admin},
        )
    return key


def find_key(key_or_prefix: str) -> ApiKey:
    """A key by its raw value or its visible prefix."""
    keys = ApiKey.objects.select_related("org")
    key = keys.filter(key_hash=hash_key(key_or_prefix)).first()
    if key is None and len(key_or_prefix) == VISIBLE_PREFIX_LEN:
        key = keys.filter(prefix=key_or_prefix).first()
    if key is None:
        raise NotFound("no API key with that value or prefix")
    return key
