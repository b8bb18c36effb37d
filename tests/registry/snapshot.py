"""A DB snapshot for "a refused request changed nothing" assertions (RELIABILITY.md (b) default).

`db_snapshot()` dumps every row of the registry and org tables as sorted tuples, so two snapshots
compare equal exactly when no row was added, removed or changed. `ApiKey.last_used_at` is left out
because authenticating a valid key may legitimately touch it.

    before = db_snapshot()
    response = http.post(...)
    assert_unchanged(before)
"""

from __future__ import annotations

from typing import Any

from django.db import models

from orgs.models import ApiKey, AuditEvent, Org
from registry.models import AutoModel, ClusterGrant, HealthStatus, ModelAlias, RegistryModel

SNAPSHOT_MODELS: tuple[type[models.Model], ...] = (
    Org,
    ApiKey,
    RegistryModel,
    ModelAlias,
    ClusterGrant,
    AutoModel,
    HealthStatus,
)
EXCLUDED_FIELDS: dict[type[models.Model], frozenset[str]] = {
    ApiKey: frozenset({"last_used_at"}),
}

Snapshot = dict[str, list[tuple[Any, ...]]]


def _rows(model: type[models.Model], org_pk: int | None) -> list[tuple[Any, ...]]:
    excluded = EXCLUDED_FIELDS.get(model, frozenset())
    names = [f.attname for f in model._meta.concrete_fields if f.name not in excluded]
    qs = model._default_manager.all()
    if org_pk is not None:
        if model is Org:
            qs = qs.filter(pk=org_pk)
        elif model is HealthStatus:
            keys = [
                f"db:{pk}"
                for pk in RegistryModel.objects.filter(org_id=org_pk).values_list("pk", flat=True)
            ]
            qs = qs.filter(target__in=keys)
        else:
            qs = qs.filter(org_id=org_pk)
    rows = [tuple(row) for row in qs.values_list(*names)]
    return sorted(rows, key=repr)


def db_snapshot(*, org: Org | None = None, include_audit: bool = False) -> Snapshot:
    """Every row of the registry and org tables (only those of `org` when given)."""
    org_pk = org.pk if org is not None else None
    snap = {m.__name__: _rows(m, org_pk) for m in SNAPSHOT_MODELS}
    if include_audit:
        snap["AuditEvent"] = _rows(AuditEvent, org_pk)
    return snap


def snapshot_diff(before: Snapshot, after: Snapshot) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per table, the rows only in `before` ("removed") and only in `after` ("added")."""
    diff: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        removed = [r for r in old if r not in new]
        added = [r for r in new if r not in old]
        if removed or added:
            diff[table] = {"removed": removed, "added": added}
    return diff


def assert_unchanged(
    before: Snapshot, *, org: Org | None = None, include_audit: bool = False
) -> None:
    after = db_snapshot(org=org, include_audit=include_audit)
    diff = snapshot_diff(before, after)
    assert not diff, f"the database changed: {diff}"
