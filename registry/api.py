"""JSON API handlers of the model registry (api-contract.md §3 rows 1–14, §4–§6).

Handlers parse, call a service and shape the response; `orgs.jsonapi.endpoint` does auth, method
routing and errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest

from orgs.auth import Caller
from orgs.errors import InvalidRequest, NotFound
from orgs.jsonapi import read_json, read_json_object
from registry import health, services
from registry.cluster import get_cluster_registry
from registry.models import AutoModel, ClusterGrant, HealthStatus
from registry.resolve import Entry, db_entry, resolve_name, visible_entries
from registry.schemas import error_fallback_target, model_type_for, shown


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def registry_item(entry: Entry, health: HealthStatus | None) -> dict[str, Any]:
    return {
        "id": entry.id,
        "provider": entry.provider,
        "model_id": entry.definition["modelId"],
        "source": entry.source,
        "immutable": entry.immutable,
        "definition": {**entry.definition, "source": entry.source, "immutable": entry.immutable},
        "health": {
            "is_available": health.is_available if health else True,
            "last_health_check": _ms(health.checked_at) if health else None,
            "error": health.error if health else None,
        },
        "created_at": _ms(entry.created_at),
        "updated_at": _ms(entry.updated_at),
    }


def _item_with_health(entry: Entry) -> dict[str, Any]:
    return registry_item(entry, HealthStatus.objects.filter(target=entry.health_key).first())


def model_object(entry: Entry, org_slug: str) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "model",
        "created": entry.definition["created"],
        "owned_by": entry.provider if entry.source == "yaml" else org_slug,
        "model_type": model_type_for(entry.api_format),
    }


def grant_item(grant: ClusterGrant, org_slug: str) -> dict[str, Any]:
    return {
        "org_id": org_slug,
        "model_id": grant.model_id,
        "granted_by": grant.granted_by,
        "granted_at": _iso(grant.granted_at),
    }


def auto_item(auto: AutoModel) -> dict[str, Any]:
    return {
        "endpoint": auto.endpoint,
        "model_id": auto.model_id,
        "set_by": auto.set_by,
        "set_at": _iso(auto.set_at),
    }


# --- §4 models (any key) -----------------------------------------------------------------------


def list_models(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    entries = [e for e in visible_entries(caller.org) if not e.hidden]
    return {"object": "list", "data": [model_object(e, caller.org.slug) for e in entries]}


def get_model(request: HttpRequest, caller: Caller, model_id: str) -> dict[str, Any]:
    entry = resolve_name(caller.org, model_id)
    if entry is None:
        raise NotFound(f"model {shown(model_id)} not found", param="model_id")
    return model_object(entry, caller.org.slug)


# --- §5 registry (org admin) -------------------------------------------------------------------


def list_registry(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    caller.require_admin()
    entries = visible_entries(caller.org)
    health = services.health_map([e.health_key for e in entries])
    return {"object": "list", "data": [registry_item(e, health.get(e.health_key)) for e in entries]}


def add_registry_model(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    caller.require_admin()
    body = read_json(request)
    model = services.add_model(caller.org, body, actor=caller.actor)
    return registry_item(db_entry(model), None)


def get_registry_model(request: HttpRequest, caller: Caller, model_id: str) -> dict[str, Any]:
    caller.require_admin()
    return _item_with_health(services.get_entry(caller.org, model_id))


def update_registry_model(request: HttpRequest, caller: Caller, model_id: str) -> dict[str, Any]:
    caller.require_admin()
    body = read_json(request)
    model = services.update_model(caller.org, model_id, body, actor=caller.actor)
    return _item_with_health(db_entry(model))


def remove_registry_model(request: HttpRequest, caller: Caller, model_id: str) -> dict[str, Any]:
    caller.require_admin()
    services.remove_model(caller.org, model_id, actor=caller.actor)
    return {"deleted": True}


def check_registry_model_health(
    request: HttpRequest, caller: Caller, model_id: str
) -> dict[str, Any]:
    caller.require_admin()
    entry = services.get_entry(caller.org, model_id)
    result = health.check_health(entry)
    return {
        "is_available": result.is_available,
        "checked_at": result.checked_at_ms,
        "error": result.error,
    }


# --- §6 cluster registry and grants (cluster admin) --------------------------------------------


def list_cluster_registry(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    caller.require_cluster_admin()
    return {
        "object": "list",
        "data": [
            {
                "id": m.id,
                "provider": m.provider,
                "api_format": m.api_format,
                "hidden": m.hidden,
                "error_fallback_model_id": error_fallback_target(m.definition),
            }
            for m in get_cluster_registry().sorted_models
        ],
    }


def list_org_grants(request: HttpRequest, caller: Caller, org_id: str) -> dict[str, Any]:
    caller.require_cluster_admin()
    org = services.org_by_slug(org_id)
    return {"object": "list", "data": [grant_item(g, org.slug) for g in services.list_grants(org)]}


def put_org_grants(request: HttpRequest, caller: Caller, org_id: str) -> dict[str, Any]:
    caller.require_cluster_admin()
    org = services.org_by_slug(org_id)
    body = read_json_object(request)
    extra = sorted(set(body) - {"modelIds"})
    if extra:
        raise InvalidRequest(f"{extra[0]}: is not a known field", param=extra[0])
    if "modelIds" not in body:
        raise InvalidRequest("modelIds: is required", param="modelIds")
    granted = services.put_grants(org, body["modelIds"], actor=caller.actor)
    return {"org_id": org.slug, "granted_model_ids": granted}


# --- §6.4 auto models (org admin) --------------------------------------------------------------


def list_auto_models(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    caller.require_admin()
    return {
        "object": "list",
        "data": [auto_item(a) for a in AutoModel.objects.filter(org=caller.org)],
    }


def put_auto_model(request: HttpRequest, caller: Caller, endpoint: str) -> dict[str, Any]:
    caller.require_admin()
    services.check_endpoint(endpoint)
    body = read_json(request)
    return auto_item(services.set_auto_model(caller.org, endpoint, body, actor=caller.actor))


def delete_auto_model(request: HttpRequest, caller: Caller, endpoint: str) -> dict[str, Any]:
    caller.require_admin()
    services.clear_auto_model(caller.org, endpoint, actor=caller.actor)
    return {"endpoint": endpoint, "cleared": True}
