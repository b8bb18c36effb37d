"""Django admin for tenants, members, keys, the audit trail and the config generation. Key hashes
are never shown. Keys change only through `orgs.services` (the revoke action here), which audits
the change and moves the config generation so every process drops its cached keys."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from orgs.models import ApiKey, AuditEvent, ConfigGeneration, Membership, Org


class ViewOnlyAdmin(admin.ModelAdmin):
    """Listed and shown, never added, changed or deleted here (machine-written rows, or rows
    that only the audited services may change)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Org)
class OrgAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role", "org"]
    search_fields = ["user__username", "org__slug"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued with `create_api_key` or the dashboard (the raw key is shown once there);
    the admin can only look and revoke (a role or revocation edited in place would escape the
    audit trail and leave the key cached in running processes)."""

    list_display = ["prefix", "org", "name", "role", "cluster_admin", "last_used_at", "revoked_at"]
    list_filter = ["role", "cluster_admin", "org"]
    search_fields = ["prefix", "name", "org__slug"]
    fields = [
        "org",
        "name",
        "prefix",
        "role",
        "cluster_admin",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        from orgs.services import revoke_api_key

        for key in queryset:
            revoke_api_key(key, actor=f"user:{request.user.get_username()}")


@admin.register(AuditEvent)
class AuditEventAdmin(ViewOnlyAdmin):
    list_display = ["created_at", "org_slug", "actor", "action", "target"]
    list_filter = ["action", "org_slug"]
    search_fields = ["actor", "target", "org_slug"]


@admin.register(ConfigGeneration)
class ConfigGenerationAdmin(ViewOnlyAdmin):
    """The counter that invalidates hot-path caches (used without Redis): moved by the services."""

    list_display = ["id", "value"]
