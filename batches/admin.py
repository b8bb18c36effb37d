"""Django admin for files, batches and their items: for looking only. Batches change state only
through the API and the workers, and files are deleted through the API, which removes their
stored bytes too."""

from __future__ import annotations

from django.contrib import admin

from batches.models import Batch, BatchItem, File
from orgs.admin import ViewOnlyAdmin


@admin.register(File)
class FileAdmin(ViewOnlyAdmin):
    list_display = ["public_id", "org", "end_user", "filename", "purpose", "bytes", "created_at"]
    list_filter = ["purpose", "org"]
    search_fields = ["public_id", "filename", "org__slug", "end_user"]
    readonly_fields = [f.name for f in File._meta.fields]


@admin.register(Batch)
class BatchAdmin(ViewOnlyAdmin):
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
class BatchItemAdmin(ViewOnlyAdmin):
    list_display = ["batch", "line", "custom_id", "status", "attempts", "status_code"]
    list_filter = ["status"]
    search_fields = ["batch__public_id", "custom_id"]
    list_select_related = ["batch"]
    raw_id_fields = ["batch"]
    readonly_fields = [f.name for f in BatchItem._meta.fields]
