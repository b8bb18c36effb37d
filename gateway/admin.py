"""Django admin for usage records: written by the gateway for every request, read-only here."""

from __future__ import annotations

from django.contrib import admin

from gateway.models import UsageRecord
from orgs.admin import ViewOnlyAdmin


@admin.register(UsageRecord)
class UsageRecordAdmin(ViewOnlyAdmin):
    list_display = [
        "created_at",
        "org",
        "api_key",
        "end_user",
        "endpoint",
        "model_id",
        "status_code",
        "total_tokens",
        "latency_ms",
    ]
    list_filter = ["endpoint", "status_code", "cached", "stream", "org"]
    search_fields = ["model_id", "requested_model", "end_user", "org__slug", "api_key__prefix"]
    list_select_related = ["org", "api_key"]
    raw_id_fields = ["org", "api_key"]
