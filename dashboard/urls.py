"""URL trees: the JSON API under /api/v1/llm/, the admin, and the HTML pages."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from orgs.jsonapi import not_found

urlpatterns = [
    path("api/v1/llm/", include("dashboard.api")),
    re_path(r"^api(?:/.*)?$", not_found),
    path("admin/", admin.site.urls),
]

handler500 = "dashboard.api.server_error"
