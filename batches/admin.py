"""Django admin for files, batches and their items: for looking, not for editing (batches change
state only through the API and the workers)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from batches.models import Batch, BatchItem, File


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(File)
class FileAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "org", "end_user", "filename", "purpose", "bytes", "created_at"]
    list_filter = ["purpose", "org"]
    search_fields = ["public_id", "filename", "org__slug", "end_user"]
    readonly_fields = [f.name for f in File._meta.fields]


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "org",
        "end_user",
        "status",
        "total",
        "completed",
        "failed",
        "created_at",
        "heartbeat_at",
    ]
    list_filter = ["status", "org"]
    search_fields = ["public_id", "org__slug", "end_user"]
    readonly_fields = [f.name for f in Batch._meta.fields]


@admin.register(BatchItem)
class BatchItemAdmin(ReadOnlyAdmin):
    list_display = ["batch", "line", "custom_id", "status", "attempts", "status_code"]
    list_filter = ["status"]
    search_fields = ["batch__public_id", "custom_id"]
    list_select_related = ["batch"]
    raw_id_fields = ["batch"]
    readonly_fields = [f.name for f in BatchItem._meta.fields]
