"""A DB snapshot for "a refused request changed nothing" assertions (RELIABILITY.md (b) default).

`db_snapshot()` dumps every row of the registry and org tables as sorted tuples, so two snapshots
compare equal exactly when no row was added, removed or changed. `ApiKey.last_used_at` is left out
because authenticating a valid key may legitimately touch it. `tables_snapshot()` takes any list of
tables (the tenancy matrix snapshots the batch tables too).

    before = db_snapshot()
    response = http.post(...)
    assert_unchanged(before)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models

from orgs.models import ApiKey, AuditEvent, Org
from registry.models import (
    AutoModel,
    ClusterGrant,
    HealthCheckResult,
    HealthStatus,
    ModelAlias,
    RegistryModel,
)

SNAPSHOT_MODELS: tuple[type[models.Model], ...] = (
    Org,
    ApiKey,
    RegistryModel,
    ModelAlias,
    ClusterGrant,
    AutoModel,
    HealthStatus,
)
# Columns a request may legitimately touch without changing anything.
EXCLUDED_FIELDS: dict[type[models.Model], frozenset[str]] = {
    ApiKey: frozenset({"last_used_at"}),  # authenticating a key
    get_user_model(): frozenset({"last_login"}),  # signing in
}

Snapshot = dict[str, list[tuple[Any, ...]]]


def scoped(model: type[models.Model], qs: Any, org: Org) -> Any:
    """The rows of `qs` that belong to `org`."""
    if model is Org:
        return qs.filter(pk=org.pk)
    if model in (HealthStatus, HealthCheckResult):
        keys = [m.health_key for m in RegistryModel.objects.filter(org=org)]
        return qs.filter(target__in=keys)
    if model is get_user_model():
        return qs.filter(memberships__org=org)
    if model.__name__ == "BatchItem":
        return qs.filter(batch__org=org)
    return qs.filter(org=org)


def table_rows(model: type[models.Model], org: Org | None = None) -> list[tuple[Any, ...]]:
    """Every row of `model` (only `org`'s when given) as sorted tuples."""
    excluded = EXCLUDED_FIELDS.get(model, frozenset())
    names = [f.attname for f in model._meta.concrete_fields if f.name not in excluded]
    qs = model._default_manager.all()
    if org is not None:
        qs = scoped(model, qs, org)
    return sorted((tuple(row) for row in qs.values_list(*names)), key=repr)


def tables_snapshot(tables: Iterable[type[models.Model]], org: Org | None = None) -> Snapshot:
    return {model.__name__: table_rows(model, org) for model in tables}


def db_snapshot(*, org: Org | None = None, include_audit: bool = False) -> Snapshot:
    """Every row of the registry and org tables (only those of `org` when given)."""
    tables = (*SNAPSHOT_MODELS, AuditEvent) if include_audit else SNAPSHOT_MODELS
    return tables_snapshot(tables, org)


def snapshot_diff(
    before: Snapshot, after: Snapshot, *, limit: int | None = None
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per table, the rows only in `before` ("removed") and only in `after` ("added"); at most
    `limit` of each when given."""
    diff: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        removed = [r for r in old if r not in new]
        added = [r for r in new if r not in old]
        if removed or added:
            diff[table] = {"removed": removed[:limit], "added": added[:limit]}
    return diff


def assert_unchanged(
    before: Snapshot, *, org: Org | None = None, include_audit: bool = False
) -> None:
    after = db_snapshot(org=org, include_audit=include_audit)
    diff = snapshot_diff(before, after)
    assert not diff, f"the database changed: {diff}"
