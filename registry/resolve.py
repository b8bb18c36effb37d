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
