"""The JSON API mount at /api/v1/llm/ (api-contract.md §3) and its error handlers."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, re_path

from batches import api as batches
from dashboard import openapi
from dashboard.middleware import _InternalError
from gateway import api as gateway
from orgs.jsonapi import async_endpoint, endpoint, error_response, not_found
from registry import api as registry

logger = logging.getLogger(__name__)

# Order matters: specific routes first, the catch-all model id last (§1.1). Ids may contain "/",
# so they are matched with the "path" converter.
urlpatterns = [
    path("models", endpoint(GET=registry.list_models)),
    path(
        "models/registry",
        endpoint(GET=registry.list_registry, POST=registry.add_registry_model),
    ),
    path(
        "models/registry/<path:model_id>/health",
        endpoint(POST=registry.check_registry_model_health),
    ),
    path(
        "models/registry/<path:model_id>",
        endpoint(
            GET=registry.get_registry_model,
            PATCH=registry.update_registry_model,
            DELETE=registry.remove_registry_model,
        ),
    ),
    path("models/cluster_registry", endpoint(GET=registry.list_cluster_registry)),
    path(
        "models/cluster_registry/orgs/<str:org_id>/grants",
        endpoint(GET=registry.list_org_grants, PUT=registry.put_org_grants),
    ),
    path("models/auto", endpoint(GET=registry.list_auto_models)),
    path(
        "models/auto/<str:endpoint>",
        endpoint(PUT=registry.put_auto_model, DELETE=registry.delete_auto_model),
    ),
    path("models/<path:model_id>", endpoint(GET=registry.get_model)),
    path("chat/completions", async_endpoint(POST=gateway.chat_completions)),
    path("chat/completions/stream", async_endpoint(POST=gateway.chat_completions_stream)),
    path("files", endpoint(GET=batches.list_files, POST=batches.upload_file)),
    path("files/<str:file_id>", endpoint(GET=batches.get_file, DELETE=batches.delete_file)),
    path("files/<str:file_id>/content", endpoint(GET=batches.file_content)),
    path("batches", endpoint(GET=batches.list_batches, POST=batches.create_batch)),
    path("batches/<str:batch_id>", endpoint(GET=batches.get_batch)),
    path("batches/<str:batch_id>/cancel", endpoint(POST=batches.cancel_batch)),
    path("openapi.json", openapi.openapi_json),
    re_path(r"^.*$", not_found),
]


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under the API prefix, a plain page elsewhere. Never a stack trace."""
    if request.path.startswith("/api/"):
        return error_response(_InternalError("internal error; the request was not completed"))
    return render(request, "500.html", status=500)
