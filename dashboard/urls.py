"""URL trees: the JSON API under /api/v1/llm/, the HTML pages (dashboard/pages.py), the admin."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path, re_path

from orgs.jsonapi import not_found

urlpatterns = [
    path("api/v1/llm/", include("dashboard.api")),
    re_path(r"^api(?:/.*)?$", not_found),
    path("", include("dashboard.pages")),
    path("admin/", admin.site.urls),
]
# CSS, JS and vendored htmx under uvicorn in development (DEBUG only; an empty list otherwise:
# in production a reverse proxy serves STATIC_ROOT after `manage.py collectstatic`).
urlpatterns += staticfiles_urlpatterns()

handler500 = "dashboard.api.server_error"
