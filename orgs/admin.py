"""Django admin for tenants, members, keys and the audit trail. Key hashes are never shown."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from orgs.models import ApiKey, AuditEvent, Membership, Org


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
    the admin can only look and revoke."""

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
    readonly_fields = ["org", "prefix", "created_by", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        from orgs.services import revoke_api_key

        for key in queryset:
            revoke_api_key(key, actor=f"user:{request.user}")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "org_slug", "actor", "action", "target"]
    list_filter = ["action", "org_slug"]
    search_fields = ["actor", "target", "org_slug"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
