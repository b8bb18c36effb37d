"""Django admin for the registry. Provider secrets are never shown: the definition column holds
only redacted values and the ciphertext column is left out. Operator (YAML) models are listed on
a read-only page, since they live in the cluster registry file, not in the database."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from registry.cluster import get_cluster_registry
from registry.models import AutoModel, ClusterGrant, HealthStatus, ModelAlias, RegistryModel
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


@admin.register(ClusterGrant)
class ClusterGrantAdmin(admin.ModelAdmin):
    list_display = ["org", "model_id", "granted_by", "granted_at"]
    list_filter = ["org", "model_id"]
    search_fields = ["org__slug", "model_id"]


@admin.register(AutoModel)
class AutoModelAdmin(admin.ModelAdmin):
    list_display = ["org", "endpoint", "model_id", "set_by", "set_at"]
    list_filter = ["endpoint", "org"]


@admin.register(HealthStatus)
class HealthStatusAdmin(admin.ModelAdmin):
    list_display = ["target", "is_available", "checked_at", "latency_ms", "error"]
    list_filter = ["is_available"]
    search_fields = ["target"]
