"""URL patterns of the HTML dashboard (included from dashboard/urls.py after the JSON API).

Org pages live under /orgs/<slug>/ so that links can be shared. Model ids contain ':' and may
contain '/', so they use the `path` converter and always come last.
"""

from __future__ import annotations

from django.urls import path

from dashboard.views import (
    activity,
    auto,
    batches,
    docs,
    grants,
    health,
    home,
    keys,
    models,
    playground,
    status,
    usage,
)

app_name = "dashboard"

urlpatterns = [
    path("", home.home, name="home"),
    path("login", home.login, name="login"),
    path("logout", home.logout, name="logout"),
    path("switch-org", home.switch_org, name="switch-org"),
    path("healthz", status.healthz, name="healthz"),
    # Models
    path("orgs/<slug:slug>/models", models.model_list, name="model-list"),
    path("orgs/<slug:slug>/models/new", models.model_create, name="model-create"),
    path("orgs/<slug:slug>/models/test", models.model_test, name="model-test"),
    path(
        "orgs/<slug:slug>/models/test/<path:model_id>",
        models.model_test,
        name="model-test-stored",
    ),
    path("orgs/<slug:slug>/models/edit/<path:model_id>", models.model_update, name="model-update"),
    path(
        "orgs/<slug:slug>/models/delete/<path:model_id>",
        models.model_delete,
        name="model-delete",
    ),
    # Auto models
    path("orgs/<slug:slug>/auto", auto.auto_list, name="auto-list"),
    path("orgs/<slug:slug>/auto/<str:endpoint>", auto.auto_update, name="auto-update"),
    # Health
    path("orgs/<slug:slug>/health", health.health_list, name="health-list"),
    path(
        "orgs/<slug:slug>/health/check/<path:model_id>",
        health.health_check,
        name="health-check",
    ),
    # API keys
    path("orgs/<slug:slug>/keys", keys.key_list, name="key-list"),
    path("orgs/<slug:slug>/keys/revoke/<int:key_id>", keys.key_revoke, name="key-revoke"),
    # Playground: the page (POST sends a prompt) and the SSE stream of one answer
    path("orgs/<slug:slug>/playground", playground.playground, name="playground"),
    path(
        "orgs/<slug:slug>/playground/stream/<str:token>",
        playground.playground_stream,
        name="playground-stream",
    ),
    # Usage and the audit trail (org admins)
    path("orgs/<slug:slug>/usage", usage.usage, name="usage"),
    path("orgs/<slug:slug>/activity", activity.activity, name="activity"),
    # Batches and files
    path("orgs/<slug:slug>/batches", batches.batch_list, name="batch-list"),
    path(
        "orgs/<slug:slug>/batches/cancel/<str:batch_id>", batches.batch_cancel, name="batch-cancel"
    ),
    path("orgs/<slug:slug>/files", batches.file_list, name="file-list"),
    path("orgs/<slug:slug>/files/delete/<str:file_id>", batches.file_delete, name="file-delete"),
    path(
        "orgs/<slug:slug>/files/content/<str:file_id>", batches.file_download, name="file-download"
    ),
    # Grants (cluster admins)
    path("grants", grants.grant_list, name="grant-list"),
    path("grants/<slug:slug>", grants.grant_update, name="grant-update"),
    # The API reference
    path("docs/api", docs.api_docs, name="api-docs"),
]
