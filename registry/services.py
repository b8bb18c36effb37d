"""Verbs on the model registry. Each write runs in one transaction and leaves an audit record."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from orgs.models import Org
from orgs.services import record_audit
from registry import upstream
from registry.cluster import get_cluster_registry
from registry.models import AutoModel, ClusterGrant, HealthStatus, ModelAlias, RegistryModel
from registry.resolve import Entry, cluster_entry, db_entry, names_taken_in_org, resolve_name
from registry.schemas import (
    API_FORMATS,
    CLEARABLE_FIELDS,
    REQUIRED_FIELDS,
    ModelDefinition,
    dump_definition,
    parse_definition,
    shown,
)

# ---------------------------------------------------------------------------------------------
# Registry models


def get_entry(org: Org, model_id: str) -> Entry:
    """A registry model by id as the org sees it (404 for anything it cannot see)."""
    model = RegistryModel.objects.for_org(org).filter(registry_id=model_id).first()
    if model is not None:
        return db_entry(model)
    cluster_model = get_cluster_registry().models.get(model_id)
    if (
        cluster_model is not None
        and ClusterGrant.objects.filter(org=org, model_id=model_id).exists()
    ):
        return cluster_entry(cluster_model)
    raise NotFound(f"model {shown(model_id)} not found", param="id")


def _check_names_free(
    org: Org, definition: dict[str, Any], *, exclude_pk: int | None = None
) -> None:
    names = [definition["id"], *(definition.get("aliases") or [])]
    registry = get_cluster_registry()
    clash = sorted(set(names) & registry.names())
    if clash:
        raise Conflict(
            f"{clash[0]!r} is an operator (YAML) model id or alias; YAML models cannot be overridden",
            param="id" if clash[0] == definition["id"] else "aliases",
        )
    taken = names_taken_in_org(org, names, exclude_pk=exclude_pk)
    if taken:
        raise Conflict(
            f"{taken[0]!r} is already used by a model of this org",
            param="id" if taken[0] == definition["id"] else "aliases",
        )


def _check_reroute_targets(org: Org, definition: dict[str, Any]) -> None:
    for index, rule in enumerate(definition.get("rerouteRules") or []):
        target = rule["targetModelId"]
        entry = resolve_name(org, target)
        if entry is None:
            raise InvalidRequest(
                f"rerouteRules[{index}].targetModelId: model {shown(target)} is not available to this org",
                param=f"rerouteRules[{index}].targetModelId",
            )
        if entry.id == definition["id"]:
            raise InvalidRequest(
                f"rerouteRules[{index}].targetModelId: must not be the model itself",
                param=f"rerouteRules[{index}].targetModelId",
            )


def _check_targets(definition: dict[str, Any]) -> None:
    """Org models may not point at private, loopback or link-local addresses (unless allowed)."""
    from django.conf import settings

    urls = [("baseUrl", definition.get("baseUrl"))]
    urls.append(("healthCheck.url", (definition.get("healthCheck") or {}).get("url")))
    for field, url in urls:
        if not url:
            continue
        try:
            upstream.check_static_target(
                url, allowed_networks=settings.UPSTREAM_ALLOWED_NETWORKS, field=field
            )
        except upstream.UpstreamURLError as exc:
            raise InvalidRequest(str(exc), param=field) from None


def _sync_aliases(model: RegistryModel, aliases: list[str]) -> None:
    ModelAlias.objects.filter(model=model).exclude(alias__in=aliases).delete()
    existing = set(ModelAlias.objects.filter(model=model).values_list("alias", flat=True))
    ModelAlias.objects.bulk_create(
        [ModelAlias(org=model.org, alias=a, model=model) for a in aliases if a not in existing]
    )


def add_model(org: Org, body: Any, *, actor: str) -> RegistryModel:
    parsed: ModelDefinition = parse_definition(body)
    definition = dump_definition(parsed)
    _check_targets(definition)
    _check_names_free(org, definition)
    _check_reroute_targets(org, definition)
    now = timezone.now()
    model = RegistryModel(org=org, registry_id=definition["id"], created_at=now, updated_at=now)
    model.set_definition(definition)
    try:
        with transaction.atomic():
            model.save()
            _sync_aliases(model, definition.get("aliases") or [])
            record_audit(
                org=org,
                actor=actor,
                action="model.added",
                target=model.registry_id,
                changes={"definition": model.definition},
            )
    except IntegrityError:
        raise Conflict(f"model {definition['id']!r} already exists", param="id") from None
    return model


def _merge_patch(current: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    known = set(ModelDefinition.model_fields)
    merged = dict(current)
    changed: list[str] = []
    for key, value in body.items():
        if key == "id":
            if value != current["id"]:
                raise InvalidRequest("id: cannot be changed", param="id")
            continue
        if key not in known:
            raise InvalidRequest(f"{key}: is not a known field", param=key)
        if value is None:
            if key in REQUIRED_FIELDS:
                raise InvalidRequest(f"{key}: cannot be null", param=key)
            if key in CLEARABLE_FIELDS and key in merged:
                del merged[key]
                changed.append(key)
            continue
        merged[key] = value
        changed.append(key)
    return merged, changed


def update_model(org: Org, model_id: str, body: Any, *, actor: str) -> RegistryModel:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    with transaction.atomic():
        model = (
            RegistryModel.objects.for_org(org)
            .select_for_update()
            .select_related("org")
            .filter(registry_id=model_id)
            .first()
        )
        if model is None:
            get_entry(org, model_id)  # 404 unless it is a visible YAML model
            raise PermissionDenied(
                f"model {shown(model_id)} comes from the operator's cluster registry and is immutable"
            )
        if not body:
            return model
        merged, changed = _merge_patch(model.full_definition(), body)
        definition = dump_definition(parse_definition(merged))
        _check_targets(definition)
        _check_names_free(org, definition, exclude_pk=model.pk)
        _check_reroute_targets(org, definition)
        before = model.definition
        model.set_definition(definition)
        model.updated_at = timezone.now()
        model.save()
        _sync_aliases(model, definition.get("aliases") or [])
        record_audit(
            org=org,
            actor=actor,
            action="model.updated",
            target=model.registry_id,
            changes={
                key: {"from": before.get(key), "to": model.definition.get(key)}
                for key in sorted(set(changed))
            },
        )
    return model


def remove_model(org: Org, model_id: str, *, actor: str) -> None:
    with transaction.atomic():
        model = (
            RegistryModel.objects.for_org(org)
            .select_for_update()
            .filter(registry_id=model_id)
            .first()
        )
        if model is None:
            get_entry(org, model_id)
            raise PermissionDenied(
                f"model {shown(model_id)} comes from the operator's cluster registry and is immutable"
            )
        names = {
            model.registry_id,
            *ModelAlias.objects.filter(model=model).values_list("alias", flat=True),
        }
        cleared = list(
            AutoModel.objects.filter(org=org, model_id__in=names).values_list("endpoint", flat=True)
        )
        AutoModel.objects.filter(org=org, model_id__in=names).delete()
        HealthStatus.objects.filter(target=model.health_key).delete()
        removed = model.definition  # redacted: secrets never reach the audit trail
        model.delete()
        changes: dict[str, Any] = {"definition": removed}
        if cleared:
            changes["auto_overrides_cleared"] = sorted(cleared)
        record_audit(org=org, actor=actor, action="model.removed", target=model_id, changes=changes)


# ---------------------------------------------------------------------------------------------
# Health


def health_map(keys: list[str]) -> dict[str, HealthStatus]:
    return {h.target: h for h in HealthStatus.objects.filter(target__in=keys)}


# ---------------------------------------------------------------------------------------------
# Grants


def org_by_slug(slug: str) -> Org:
    org = Org.objects.filter(slug=slug).first()
    if org is None:
        raise NotFound(f"org {slug!r} not found", param="orgId")
    return org


def list_grants(org: Org) -> list[ClusterGrant]:
    ids = set(get_cluster_registry().models)
    return [g for g in ClusterGrant.objects.filter(org=org) if g.model_id in ids]


def put_grants(org: Org, model_ids: Any, *, actor: str) -> list[str]:
    """Replace the org's grants with exactly these cluster models (idempotent)."""
    if not isinstance(model_ids, list) or not all(isinstance(m, str) for m in model_ids):
        raise InvalidRequest("modelIds: must be an array of model ids", param="modelIds")
    wanted = set(model_ids)
    registry = get_cluster_registry()
    unknown = sorted(wanted - set(registry.models))
    if unknown:
        raise InvalidRequest(
            f"modelIds: unknown cluster model id(s): {', '.join(unknown)}", param="modelIds"
        )
    with transaction.atomic():
        # Lock the org row so that concurrent replacements serialise.
        Org.objects.select_for_update().filter(pk=org.pk).first()
        current = set(ClusterGrant.objects.filter(org=org).values_list("model_id", flat=True))
        revoked = current - wanted
        added = wanted - current
        cleared: list[str] = []
        if revoked:
            ClusterGrant.objects.filter(org=org, model_id__in=revoked).delete()
            revoked_names = set(revoked)
            for mid in revoked:
                revoked_names.update(registry.models[mid].aliases if mid in registry.models else [])
            overrides = AutoModel.objects.filter(org=org, model_id__in=revoked_names)
            cleared = sorted(overrides.values_list("endpoint", flat=True))
            overrides.delete()
        ClusterGrant.objects.bulk_create(
            [ClusterGrant(org=org, model_id=mid, granted_by=actor) for mid in sorted(added)]
        )
        if revoked or added:
            record_audit(
                org=org,
                actor=actor,
                action="grants.replaced",
                target=org.slug,
                changes={
                    "granted": sorted(added),
                    "revoked": sorted(revoked),
                    **({"auto_overrides_cleared": cleared} if cleared else {}),
                },
            )
    return sorted(wanted)


# ---------------------------------------------------------------------------------------------
# Auto models


def check_endpoint(endpoint: str) -> str:
    if endpoint not in API_FORMATS:
        raise NotFound(
            f"unknown auto endpoint {endpoint!r}; use one of {', '.join(API_FORMATS)}",
            param="endpoint",
        )
    return endpoint


def set_auto_model(org: Org, endpoint: str, body: Any, *, actor: str) -> AutoModel:
    check_endpoint(endpoint)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    extra = sorted(set(body) - {"modelId"})
    if extra:
        raise InvalidRequest(f"{extra[0]}: is not a known field", param=extra[0])
    model_id = body.get("modelId")
    if model_id is None:
        raise InvalidRequest("modelId: is required", param="modelId")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("modelId: must be a non-empty string", param="modelId")
    if model_id == "auto":
        raise InvalidRequest("modelId: cannot be 'auto'", param="modelId")
    entry = resolve_name(org, model_id)
    if entry is None:
        raise InvalidRequest(
            f"modelId: model {shown(model_id)} not available to this org", param="modelId"
        )
    if entry.api_format != endpoint:
        raise InvalidRequest(
            f"modelId: model {entry.id!r} has apiFormat {entry.api_format!r}, not {endpoint!r}",
            param="modelId",
        )
    with transaction.atomic():
        previous = (
            AutoModel.objects.select_for_update()
            .filter(org=org, endpoint=endpoint)
            .values_list("model_id", flat=True)
            .first()
        )
        auto, _ = AutoModel.objects.update_or_create(
            org=org,
            endpoint=endpoint,
            defaults={"model_id": entry.id, "set_by": actor, "set_at": timezone.now()},
        )
        record_audit(
            org=org,
            actor=actor,
            action="auto.set",
            target=endpoint,
            changes={"endpoint": endpoint, "model_id": entry.id, "previous_model_id": previous},
        )
    return auto


def clear_auto_model(org: Org, endpoint: str, *, actor: str) -> None:
    check_endpoint(endpoint)
    with transaction.atomic():
        rows = AutoModel.objects.select_for_update().filter(org=org, endpoint=endpoint)
        previous = rows.values_list("model_id", flat=True).first()
        deleted, _ = rows.delete()
        if deleted:
            record_audit(
                org=org,
                actor=actor,
                action="auto.cleared",
                target=endpoint,
                changes={"endpoint": endpoint, "model_id": previous},
            )
