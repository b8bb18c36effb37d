"""Django admin for the registry. Provider secrets are never shown: the definition column holds
only redacted values and the ciphertext column is left out. Operator (YAML) models are listed on
a read-only page, since they live in the cluster registry file, not in the database.

Writes that change what the gateway answers (models, grants, auto models) go through
`registry.services`, which validate them, record them in the audit trail and move the config
generation: so the admin only looks at grants and auto models, and deletes an org model through
`remove_model`. Health rows are written by the probes and are read-only here."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from orgs.admin import ViewOnlyAdmin
from registry.cluster import get_cluster_registry
from registry.models import (
    AutoModel,
    ClusterGrant,
    HealthCheckResult,
    HealthStatus,
    ModelAlias,
    RegistryModel,
)
from registry.schemas import redact_definition


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 0
    fields = ["alias"]
    readonly_fields = ["alias"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RegistryModel)
class RegistryModelAdmin(admin.ModelAdmin):
    """Org models are edited through the API or the dashboard, which validate the whole
    definition; here they can be looked at and deleted."""

    list_display = ["registry_id", "org", "api_format", "provider", "hidden", "updated_at"]
    list_filter = ["api_format", "hidden", "org"]
    search_fields = ["registry_id", "upstream_model", "provider", "org__slug"]
    exclude = ["auth_ciphertext", "definition"]
    readonly_fields = [
        "org",
        "registry_id",
        "provider",
        "upstream_model",
        "api_format",
        "display_name",
        "base_url",
        "context_window",
        "rpm",
        "hidden",
        "definition_redacted",
        "created_at",
        "updated_at",
    ]
    inlines = [ModelAliasInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: RegistryModel) -> None:
        """Through the service: clears the org's auto overrides, audits, moves the generation."""
        from registry.services import remove_model

        remove_model(obj.org, obj.registry_id, actor=f"user:{request.user.get_username()}")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RegistryModel]) -> None:
        for obj in queryset.select_related("org"):
            self.delete_model(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """Aliases go with their model (in `remove_model`), though they cannot be deleted alone."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms_needed - {ModelAlias._meta.verbose_name}, protected

    @admin.display(description="definition (secrets masked)")
    def definition_redacted(self, obj: RegistryModel) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.definition, indent=2))

    def get_urls(self):  # type: ignore[no-untyped-def]
        extra = [
            path(
                "cluster-registry/",
                self.admin_site.admin_view(self.cluster_registry_view),
                name="registry_cluster_registry",
            )
        ]
        return extra + super().get_urls()

    def cluster_registry_view(self, request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])  # the YAML file is the only source
        registry = get_cluster_registry()
        rows = [
            {
                "model": m,
                "definition": json.dumps(redact_definition(m.definition), indent=2),
            }
            for m in registry.sorted_models
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Cluster registry (operator YAML, read-only)",
            "path": registry.path,
            "rows": rows,
            "auto": sorted(registry.auto.items()),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/registry/cluster_registry.html", context)


@admin.register(ModelAlias)
class ModelAliasAdmin(ViewOnlyAdmin):
    """Aliases are part of the model's definition: changed with it, through the API or dashboard."""

    list_display = ["alias", "model", "org"]
    list_filter = ["org"]
    search_fields = ["alias", "model__registry_id", "org__slug"]
    list_select_related = ["model", "model__org", "org"]


@admin.register(ClusterGrant)
class ClusterGrantAdmin(ViewOnlyAdmin):
    """Granted and revoked through the API or the dashboard's grants page (validated, audited)."""

    list_display = ["org", "model_id", "granted_by", "granted_at"]
    list_filter = ["org", "model_id"]
    search_fields = ["org__slug", "model_id"]


@admin.register(AutoModel)
class AutoModelAdmin(ViewOnlyAdmin):
    """Set and cleared through the API or the dashboard (validated, audited)."""

    list_display = ["org", "endpoint", "model_id", "set_by", "set_at"]
    list_filter = ["endpoint", "org"]


@admin.register(HealthStatus)
class HealthStatusAdmin(ViewOnlyAdmin):
    list_display = ["target", "is_available", "checked_at", "latency_ms", "error"]
    list_filter = ["is_available"]
    search_fields = ["target"]


@admin.register(HealthCheckResult)
class HealthCheckResultAdmin(ViewOnlyAdmin):
    list_display = [
        "target",
        "checked_at",
        "is_available",
        "status_code",
        "latency_ms",
        "trigger",
        "error",
    ]
    list_filter = ["is_available", "trigger"]
    search_fields = ["target"]
