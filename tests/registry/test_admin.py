from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from batches.models import Batch, BatchItem, File
from gateway.models import UsageRecord
from orgs.models import AuditEvent, ConfigGeneration, Membership, Role
from registry.models import (
    AutoModel,
    ClusterGrant,
    HealthCheckResult,
    HealthStatus,
    RegistryModel,
)
from registry.services import put_grants, set_auto_model
from tests.conftest import SECRET
from tests.registry.snapshot import tables_snapshot


def test_admin_pages_never_show_a_provider_secret(world, make_model, admin_client):
    model = make_model(world.org_a, auth={"type": "custom-headers", "headers": {"X-Key": SECRET}})
    pages = [
        "/admin/",
        "/admin/registry/registrymodel/",
        f"/admin/registry/registrymodel/{model.pk}/change/",
        "/admin/registry/registrymodel/cluster-registry/",
        "/admin/orgs/apikey/",
        f"/admin/orgs/apikey/{world.alice.key.pk}/change/",
        "/admin/orgs/auditevent/",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert SECRET not in body, url
        assert "sk-canary-cluster-secret" not in body, url
        assert world.alice.token not in body, url
        assert world.alice.key.key_hash not in body, url
    cluster_page = admin_client.get(
        "/admin/registry/registrymodel/cluster-registry/"
    ).content.decode()
    assert "cluster:chat-a" in cluster_page and "********" in cluster_page


def test_admin_cannot_edit_an_org_model_in_place(world, make_model, admin_client):
    model = make_model(world.org_a)
    url = f"/admin/registry/registrymodel/{model.pk}/change/"
    response = admin_client.post(url, {"hidden": "on"})
    assert response.status_code == 403
    model.refresh_from_db()
    assert model.hidden is False


# --- every model has an admin ----------------------------------------------------------------

# Models of the project's apps that deliberately have no admin page, each with its reason. Keep
# this empty unless a model truly must not be shown (e.g. a bare through-table).
NOT_IN_ADMIN: dict[str, str] = {}

HEADER_CANARY = "hdr-canary-admin-51c9-header-value"
CLUSTER_SECRET = "sk-canary-cluster-secret"


def local_models() -> list[type[models.Model]]:
    """Every concrete model of the project's own apps (those whose code lives in the repo)."""
    base = Path(settings.BASE_DIR).resolve()
    found = []
    for config in apps.get_app_configs():
        path = Path(config.path).resolve()
        if not path.is_relative_to(base) or ".venv" in path.parts:
            continue
        found += [m for m in config.get_models() if not m._meta.abstract]
    return found


def test_every_model_of_the_project_apps_is_in_the_admin():
    labels = {m._meta.app_label for m in local_models()}
    assert labels >= {"orgs", "registry", "gateway", "batches"}
    missing = [
        m._meta.label
        for m in local_models()
        if m not in admin.site._registry and m._meta.label not in NOT_IN_ADMIN
    ]
    assert missing == [], f"register these in the app's admin.py: {missing}"


@pytest.fixture
def every_row(world, make_model, admin_user):
    """At least one row of every model registered in the admin, with canary secrets in place."""
    model = make_model(
        world.org_a,
        auth={
            "type": "composite",
            "strategies": [
                {"type": "api-key", "value": SECRET},
                {"type": "custom-headers", "headers": {"X-Tenant": HEADER_CANARY}},
            ],
        },
        aliases=["chat-one"],
    )
    put_grants(world.org_a, ["cluster:chat-a", "cluster:embed"], actor="test")
    set_auto_model(world.org_a, "completions", {"modelId": "chat-a"}, actor="test")
    now = timezone.now()
    HealthStatus.objects.create(target=model.health_key, is_available=False, checked_at=now)
    HealthCheckResult.objects.create(
        target=model.health_key, is_available=False, checked_at=now, status_code=401, error="401"
    )
    ConfigGeneration.objects.get_or_create(pk=1, defaults={"value": 1})
    Membership.objects.create(user=admin_user, org=world.org_a, role=Role.ADMIN)
    Group.objects.create(name="operators")
    UsageRecord.objects.create(
        org=world.org_a,
        api_key=world.alice.key,
        endpoint="completions",
        requested_model="chat-a",
        model_id="cluster:chat-a",
        status_code=200,
    )
    file = File.objects.create(
        org=world.org_a,
        filename="in.jsonl",
        purpose="batch",
        bytes=10,
        storage_name="x",
        content_type="application/jsonl",
    )
    batch = Batch.objects.create(
        org=world.org_a,
        api_key=world.bob.key,
        input_file=file,
        endpoint="/v1/chat/completions",
        expires_at=now + timedelta(hours=1),
        worker_id="elsewhere",
        heartbeat_at=now + timedelta(hours=1),
    )
    BatchItem.objects.create(batch=batch, line=1, custom_id="req-1", body={})
    return model


def assert_no_secret(body: str, world, url: str) -> None:
    model = RegistryModel.objects.get(registry_id="acme:chat-1")
    for secret in (SECRET, HEADER_CANARY, CLUSTER_SECRET, model.auth_ciphertext):
        assert secret not in body, url
    for who in (world.alice, world.bob, world.carol, world.dave, world.revoked):
        assert who.token not in body and who.key.key_hash not in body, url


def test_every_admin_page_opens_without_showing_a_secret(world, every_row, admin_client):
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(username="admin")
    opened = 0
    for model, model_admin in admin.site._registry.items():
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        row = model._default_manager.order_by("pk").first()
        assert row is not None, f"every_row should create a {model._meta.label}"
        urls = [reverse(f"{info}_changelist"), reverse(f"{info}_change", args=[quote(row.pk)])]
        if model_admin.has_add_permission(request):
            urls.append(reverse(f"{info}_add"))
        for url in urls:
            response = admin_client.get(url)
            assert response.status_code == 200, url
            assert_no_secret(response.content.decode(), world, url)
            opened += 1
    assert opened >= 2 * len(admin.site._registry)


# --- operator (YAML) models and the service-only data are read-only ---------------------------


def everything() -> dict[str, Any]:
    return {
        **tables_snapshot(local_models()),
        "yaml": Path(settings.CLUSTER_REGISTRY_PATH).read_bytes(),
    }


def test_yaml_models_grants_and_auto_models_cannot_be_written_in_the_admin(
    world, every_row, admin_client
):
    grant = ClusterGrant.objects.get(model_id="cluster:chat-a")
    auto = AutoModel.objects.get()
    before = everything()
    refused = {
        "/admin/registry/registrymodel/cluster-registry/": {"id": "cluster:chat-a", "hidden": "on"},
        "/admin/registry/clustergrant/add/": {"org": world.org_b.pk, "model_id": "cluster:tts"},
        f"/admin/registry/clustergrant/{grant.pk}/change/": {"model_id": "cluster:tts"},
        f"/admin/registry/clustergrant/{grant.pk}/delete/": {"post": "yes"},
        "/admin/registry/automodel/add/": {"org": world.org_b.pk, "endpoint": "completions"},
        f"/admin/registry/automodel/{auto.pk}/change/": {"model_id": "auto"},
        f"/admin/registry/automodel/{auto.pk}/delete/": {"post": "yes"},
        "/admin/registry/registrymodel/add/": {"registry_id": "acme:x"},
        f"/admin/registry/registrymodel/{every_row.pk}/change/": {"hidden": "on"},
        f"/admin/orgs/apikey/{world.bob.key.pk}/change/": {"role": "admin", "cluster_admin": "on"},
        f"/admin/orgs/apikey/{world.bob.key.pk}/delete/": {"post": "yes"},
        "/admin/orgs/auditevent/add/": {"action": "forged"},
        "/admin/orgs/configgeneration/1/change/": {"value": "0"},
        "/admin/registry/healthstatus/add/": {"target": "yaml:cluster:chat-a"},
        "/admin/gateway/usagerecord/add/": {"endpoint": "completions"},
        f"/admin/batches/file/{File.objects.get().pk}/delete/": {"post": "yes"},
        f"/admin/batches/batch/{Batch.objects.get().pk}/delete/": {"post": "yes"},
    }
    for url, data in refused.items():
        response = admin_client.post(url, data)
        assert response.status_code in (403, 405), url
    # Bulk deletion is not offered for what only the services may write.
    for path, model in (
        ("registry/clustergrant", ClusterGrant),
        ("registry/automodel", AutoModel),
        ("batches/file", File),
        ("batches/batch", Batch),
    ):
        pks = [str(pk) for pk in model.objects.values_list("pk", flat=True)]
        data = {"action": "delete_selected", "_selected_action": pks, "post": "yes"}
        admin_client.post(f"/admin/{path}/", data)
    assert everything() == before


def test_admin_deletes_and_revocations_go_through_the_services(world, every_row, admin_client):
    """So that they are audited and clear what depends on them (the auto override)."""
    before = AuditEvent.objects.count()
    url = f"/admin/registry/registrymodel/{every_row.pk}/delete/"
    set_auto_model(world.org_a, "completions", {"modelId": "acme:chat-1"}, actor="test")
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not RegistryModel.objects.exists() and not AutoModel.objects.exists()
    removed = AuditEvent.objects.get(action="model.removed")
    assert (removed.actor, removed.org_id, removed.target) == (
        "user:admin",
        world.org_a.pk,
        "acme:chat-1",
    )
    assert removed.changes["auto_overrides_cleared"] == ["completions"]
    data = {"action": "revoke", "_selected_action": [str(world.bob.key.pk)]}
    assert admin_client.post("/admin/orgs/apikey/", data).status_code == 302
    world.bob.key.refresh_from_db()
    assert world.bob.key.revoked_at is not None
    revoked = AuditEvent.objects.get(action="key.revoked", target=world.bob.key.prefix)
    assert revoked.actor == "user:admin"
    assert AuditEvent.objects.count() == before + 3  # auto.set, model.removed, key.revoked
