"""The API reference: the OpenAPI document (dashboard/openapi.py) as a plain HTML page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.openapi import API_PREFIX, DOCUMENT_PATH, reference, reference_schemas


@require_GET
@login_required
def api_docs(request: HttpRequest) -> HttpResponse:
    context = {
        "nav_section": "docs",
        "groups": reference(),
        "schemas": reference_schemas(),
        "api_prefix": API_PREFIX,
        "document_path": DOCUMENT_PATH,
    }
    return render(request, "dashboard/api_docs.html", context)
