"""Which models an org can use, and what a name (id or alias) means for that org.

Org models come first, then the operator models granted to the org. Another org's models are
never considered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orgs.models import Org
from registry.cluster import ClusterModel, get_cluster_registry
from registry.models import ClusterGrant, ModelAlias, RegistryModel
from registry.schemas import shown


@dataclass(frozen=True)
class Entry:
    """One model as an org sees it, from either source. `definition` is redacted."""

    id: str
    source: str  # "database" or "yaml"
    definition: dict[str, Any]
    health_key: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    db_model: RegistryModel | None = None
    cluster_model: ClusterModel | None = None

    @property
    def immutable(self) -> bool:
        return self.source == "yaml"

    @property
    def api_format(self) -> str:
        return self.definition["apiFormat"]

    @property
    def provider(self) -> str:
        return self.definition["provider"]

    @property
    def hidden(self) -> bool:
        return bool(self.definition.get("hidden"))

    def full_definition(self) -> dict[str, Any]:
        """The definition with real secrets, for upstream calls only."""
        if self.db_model is not None:
            return self.db_model.full_definition()
        assert self.cluster_model is not None
        return self.cluster_model.definition


def db_entry(model: RegistryModel) -> Entry:
    return Entry(
        id=model.registry_id,
        source="database",
        definition=model.definition,
        health_key=model.health_key,
        created_at=model.created_at,
        updated_at=model.updated_at,
        db_model=model,
    )


def cluster_entry(model: ClusterModel) -> Entry:
    from registry.schemas import redact_definition

    return Entry(
        id=model.id,
        source="yaml",
        definition=redact_definition(model.definition),
        health_key=model.health_key,
        cluster_model=model,
    )


def granted_ids(org: Org) -> set[str]:
    """The operator models granted to the org that still exist in the YAML file."""
    registry = get_cluster_registry()
    ids = set(ClusterGrant.objects.filter(org=org).values_list("model_id", flat=True))
    return ids & set(registry.models)


def visible_entries(org: Org) -> list[Entry]:
    """Every model the org can use: its own plus its granted cluster models, sorted by id."""
    registry = get_cluster_registry()
    entries = [db_entry(m) for m in RegistryModel.objects.for_org(org)]
    own = {e.id for e in entries}
    entries += [cluster_entry(registry.models[mid]) for mid in granted_ids(org) if mid not in own]
    entries.sort(key=lambda e: e.id)
    return entries


def find_db_model(org: Org, name: str, *, for_update: bool = False) -> RegistryModel | None:
    """An org model by id or alias."""
    qs = RegistryModel.objects.for_org(org).select_related("org")
    if for_update:
        qs = qs.select_for_update()
    model = qs.filter(registry_id=name).first()
    if model is None:
        alias = (
            ModelAlias.objects.filter(org=org, alias=name)
            .values_list("model_id", flat=True)
            .first()
        )
        if alias is not None:
            model = qs.filter(pk=alias).first()
    return model


def resolve_name(org: Org, name: str) -> Entry | None:
    """What `name` (an id or alias) means for this org, or None."""
    model = find_db_model(org, name)
    if model is not None:
        return db_entry(model)
    cluster_model = get_cluster_registry().get(name)
    if (
        cluster_model is not None
        and ClusterGrant.objects.filter(org=org, model_id=cluster_model.id).exists()
    ):
        return cluster_entry(cluster_model)
    return None


def names_taken_in_org(org: Org, names: list[str], *, exclude_pk: int | None = None) -> list[str]:
    """Which of these names an org model (other than exclude_pk) already uses as id or alias."""
    models = RegistryModel.objects.for_org(org).filter(registry_id__in=names)
    aliases = ModelAlias.objects.filter(org=org, alias__in=names)
    if exclude_pk is not None:
        models = models.exclude(pk=exclude_pk)
        aliases = aliases.exclude(model_id=exclude_pk)
    taken = set(models.values_list("registry_id", flat=True))
    taken |= set(aliases.values_list("alias", flat=True))
    return sorted(taken)


# ---------------------------------------------------------------------------------------------
# Routes: what the gateway needs to call a model


@dataclass(frozen=True)
class Route:
    """Everything needed to call one model for one org. Holds real secrets: never serialise."""

    model_id: str  # the resolved registry id, reported to clients as `model`
    source: str
    api_format: str
    upstream_model: str
    base_url: str | None
    auth: dict[str, Any]
    trusted: bool
    definition: dict[str, Any]  # redacted
    health_key: str
    via_auto: bool = False

    @property
    def rpm(self) -> int | None:
        return self.definition.get("rpm")

    @property
    def rate_limits(self) -> list[dict[str, Any]]:
        return self.definition.get("rateLimits") or []

    @property
    def context_window(self) -> int | None:
        return self.definition.get("contextWindow")

    @property
    def default_params(self) -> dict[str, Any]:
        return self.definition.get("defaultParams") or {}

    @property
    def reroute_rules(self) -> list[dict[str, Any]]:
        return self.definition.get("rerouteRules") or []

    @property
    def capabilities(self) -> dict[str, Any]:
        return self.definition.get("capabilities") or {}

    @property
    def health_check(self) -> dict[str, Any] | None:
        return self.definition.get("healthCheck")


def route_for(entry: Entry, *, via_auto: bool = False) -> Route:
    full = entry.full_definition()
    return Route(
        model_id=entry.id,
        source=entry.source,
        api_format=full["apiFormat"],
        upstream_model=full["modelId"],
        base_url=full.get("baseUrl"),
        auth=full["auth"],
        trusted=entry.source == "yaml",
        definition=entry.definition,
        health_key=entry.health_key,
        via_auto=via_auto,
    )


class RouteError(Exception):
    """Resolution failed; `kind` is "not_found" or "invalid"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def resolve_route(org: Org, name: str, endpoint: str = "completions") -> Route:
    """A model id, alias or "auto" (for `endpoint`) → the route for this org, or RouteError."""
    if name == "auto":
        from registry.models import AutoModel

        override = (
            AutoModel.objects.filter(org=org, endpoint=endpoint)
            .values_list("model_id", flat=True)
            .first()
        )
        target = override or get_cluster_registry().auto.get(endpoint)
        if target is None:
            raise RouteError("invalid", f"no auto model is configured for {endpoint}")
        entry = resolve_name(org, target)
        if entry is None:
            raise RouteError(
                "invalid", f"the auto model for {endpoint} ({target}) is not available to this org"
            )
        return route_for(entry, via_auto=True)
    entry = resolve_name(org, name)
    if entry is None:
        raise RouteError("not_found", f"model {shown(name)} not found")
    return route_for(entry)


async def aresolve_route(org: Org, name: str, endpoint: str = "completions") -> Route:
    """`resolve_route` cached in process until the config generation moves (the caller has
    synced `orgs.hotcache` for this request) or the operator YAML is reloaded."""
    from orgs import hotcache
    from orgs.asyncdb import run_db

    key = (org.pk, name, endpoint, id(get_cluster_registry()))
    cached = hotcache.get("route", key)
    if cached is hotcache.MISSING:
        try:
            cached = await run_db(resolve_route, org, name, endpoint)
        except RouteError as exc:
            cached = exc
        hotcache.put("route", key, cached)
    if isinstance(cached, RouteError):
        raise cached
    return cached


# ---------------------------------------------------------------------------------------------
# Summaries: the listing columns of every visible model, without decoding org definitions


@dataclass(frozen=True)
class Summary:
    """One visible model's listing columns. Org models are read from the denormalized columns
    that `RegistryModel.set_definition` keeps in sync, so `definition` is never decoded."""

    id: str
    source: str  # "database" or "yaml"
    display_name: str
    provider: str
    api_format: str
    context_window: int | None
    rpm: int | None
    hidden: bool
    health_key: str
    upstream_model: str = ""
    # definition.healthCheck.mode, read only with `visible_summaries(..., check_mode=True)`
    check_mode: str | None = None

    @property
    def immutable(self) -> bool:
        return self.source == "yaml"


_SUMMARY_FIELDS = (
    "pk",
    "registry_id",
    "display_name",
    "provider",
    "upstream_model",
    "api_format",
    "context_window",
    "rpm",
    "hidden",
)


def cluster_summary(model: ClusterModel) -> Summary:
    d = model.definition
    return Summary(
        id=model.id,
        source="yaml",
        display_name=d.get("displayName") or "",
        provider=d.get("provider", ""),
        api_format=d["apiFormat"],
        context_window=d.get("contextWindow"),
        rpm=d.get("rpm"),
        hidden=bool(d.get("hidden")),
        health_key=model.health_key,
        upstream_model=d.get("modelId", ""),
        check_mode=(d.get("healthCheck") or {}).get("mode"),
    )


def visible_summaries(org: Org, *, check_mode: bool = False) -> list[Summary]:
    """`visible_entries` as light summaries (same models, same order): one query for the org
    models' columns, one for the grants. `check_mode` also reads definition.healthCheck.mode
    in the database (a JSON key lookup, not a decode of every definition)."""
    from django.db.models.fields.json import KeyTextTransform

    registry = get_cluster_registry()
    qs = RegistryModel.objects.for_org(org).order_by()
    if check_mode:
        qs = qs.annotate(_check_mode=KeyTextTransform("mode", "definition__healthCheck"))
    summaries = [
        Summary(
            id=row["registry_id"],
            source="database",
            display_name=row["display_name"] or "",
            provider=row["provider"],
            api_format=row["api_format"],
            context_window=row["context_window"],
            rpm=row["rpm"],
            hidden=row["hidden"],
            health_key=f"db:{row['pk']}",
            upstream_model=row["upstream_model"],
            check_mode=row.get("_check_mode"),
        )
        for row in qs.values(*_SUMMARY_FIELDS, *(["_check_mode"] if check_mode else []))
    ]
    own = {s.id for s in summaries}
    summaries += [
        cluster_summary(registry.models[mid]) for mid in granted_ids(org) if mid not in own
    ]
    summaries.sort(key=lambda s: s.id)
    return summaries
