"""The audit trail (issue 2, item 7): every write through a service records exactly one event with
who, when, which org and what changed, and never a secret. Registry writes are driven through the
live API with meetkai-mka1; keys are issued and revoked on the dashboard's keys page. A refused
write records nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Max
from django.test import Client
from django.utils import timezone

from orgs.models import ApiKey, AuditEvent, Membership, Org, Role
from registry.models import AutoModel, ClusterGrant, RegistryModel
from registry.services import add_model, put_grants, set_auto_model
from tests.conftest import SECRET, Persona, model_body
from tests.registry.apicheck import assert_sdk_error as assert_error
from tests.registry.apicheck import sdk_error
from tests.registry.test_api_registry import kwargs

HEADER_SECRET = "hdr-canary-7d2e-audit-header-value"
NEW_SECRET = "sk-canary-9a4c-audit-rotated-secret"
CLUSTER_SECRET = "sk-canary-cluster-secret"
MARKER = "********"
SECRETS = (SECRET, HEADER_SECRET, NEW_SECRET, CLUSTER_SECRET)
AUTH = {
    "type": "composite",
    "strategies": [
        {"type": "api-key", "value": SECRET},
        {"type": "custom-headers", "headers": {"X-Tenant-Key": HEADER_SECRET}},
    ],
}
REDACTED_AUTH = {
    "type": "composite",
    "strategies": [
        {"type": "api-key", "value": MARKER},
        {"type": "custom-headers", "headers": {"X-Tenant-Key": MARKER}},
    ],
}


@dataclass
class Window:
    """The audit rows written between entering and leaving an `audited()` block."""

    start: datetime
    mark: int
    end: datetime | None = None
    events: list[AuditEvent] = field(default_factory=list)


@contextmanager
def audited() -> Iterator[Window]:
    window = Window(start=timezone.now(), mark=_last_id())
    yield window
    window.end = timezone.now()
    window.events = list(AuditEvent.objects.filter(pk__gt=window.mark).order_by("pk"))


def _last_id() -> int:
    return AuditEvent.objects.aggregate(last=Max("pk"))["last"] or 0


def the_event(
    window: Window, action: str, *, actor: str, org: Org, target: str, extra_secrets: tuple = ()
) -> AuditEvent:
    """The one event of the window, checked for who, when, which org, what and no secret."""
    assert [e.action for e in window.events] == [action]
    event = window.events[0]
    assert event.actor == actor
    assert (event.org_id, event.org_slug) == (org.pk, org.slug)
    assert event.target == target
    assert window.end is not None and window.start <= event.created_at <= window.end
    assert isinstance(event.changes, dict) and event.changes, "the event says what changed"
    row = json.dumps(AuditEvent.objects.filter(pk=event.pk).values().get(), default=str)
    for secret in (*SECRETS, *extra_secrets):
        assert secret not in row, f"a secret reached the audit row of {action}"
    return event


def key_actor(who: Persona) -> str:
    return f"key:{who.key.prefix}"


def no_event(window: Window) -> None:
    assert window.events == [], [e.action for e in window.events]


# --- registry models -------------------------------------------------------------------------


def test_adding_a_model_records_its_redacted_definition(world, sdk_for):
    with audited() as window:
        sdk_for(world.alice).llm.models.add_registry_model(
            **kwargs(model_body("acme:chat-1", auth=AUTH, displayName="Chat one"))
        )
    event = the_event(
        window,
        "model.added",
        actor=key_actor(world.alice),
        org=world.org_a,
        target="acme:chat-1",
        extra_secrets=(world.alice.token, world.alice.key.key_hash),
    )
    definition = event.changes["definition"]
    assert definition["id"] == "acme:chat-1" and definition["displayName"] == "Chat one"
    assert definition["baseUrl"] == "https://models.example.com/v1"
    assert definition["auth"] == REDACTED_AUTH


def test_updating_a_model_records_the_changed_fields_only(world, sdk_for):
    add_model(world.org_a, model_body("acme:chat-1", auth=AUTH), actor="test")
    with audited() as window:
        sdk_for(world.alice).llm.models.update_registry_model(
            id="acme:chat-1",
            display_name="Chat one",
            rpm=120,
            auth={
                "type": "composite",
                "strategies": [
                    {"type": "api-key", "value": NEW_SECRET},
                    {"type": "custom-headers", "headers": {"X-Tenant-Key": HEADER_SECRET}},
                ],
            },
        )
    event = the_event(
        window, "model.updated", actor=key_actor(world.alice), org=world.org_a, target="acme:chat-1"
    )
    assert sorted(event.changes) == ["auth", "displayName", "rpm"]
    assert event.changes["displayName"] == {"from": None, "to": "Chat one"}
    assert event.changes["rpm"] == {"from": 60, "to": 120}
    assert event.changes["auth"] == {"from": REDACTED_AUTH, "to": REDACTED_AUTH}


def test_removing_a_model_records_what_was_removed_and_the_overrides_it_cleared(world, sdk_for):
    add_model(world.org_a, model_body("acme:chat-1", auth=AUTH), actor="test")
    set_auto_model(world.org_a, "completions", {"modelId": "acme:chat-1"}, actor="test")
    with audited() as window:
        sdk_for(world.alice).llm.models.remove_registry_model(id="acme:chat-1")
    event = the_event(
        window, "model.removed", actor=key_actor(world.alice), org=world.org_a, target="acme:chat-1"
    )
    assert event.changes["definition"]["id"] == "acme:chat-1"
    assert event.changes["definition"]["auth"] == REDACTED_AUTH
    assert event.changes["auto_overrides_cleared"] == ["completions"]
    assert not RegistryModel.objects.exists() and not AutoModel.objects.exists()


# --- grants ----------------------------------------------------------------------------------


def test_replacing_grants_records_what_was_granted_and_revoked(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    with audited() as window:
        models.put_cluster_registry_org_grants(
            org_id="org-globex", model_ids=["cluster:chat-a", "cluster:embed"]
        )
    event = the_event(
        window,
        "grants.replaced",
        actor=key_actor(world.carol),
        org=world.org_b,
        target="org-globex",
    )
    assert event.changes == {"granted": ["cluster:chat-a", "cluster:embed"], "revoked": []}

    set_auto_model(world.org_b, "completions", {"modelId": "chat-a"}, actor="test")
    with audited() as window:
        models.put_cluster_registry_org_grants(
            org_id="org-globex", model_ids=["cluster:embed", "cluster:tts"]
        )
    event = the_event(
        window,
        "grants.replaced",
        actor=key_actor(world.carol),
        org=world.org_b,
        target="org-globex",
    )
    assert event.changes == {
        "granted": ["cluster:tts"],
        "revoked": ["cluster:chat-a"],
        "auto_overrides_cleared": ["completions"],
    }

    # The same set again changes nothing, so it records nothing.
    with audited() as window:
        models.put_cluster_registry_org_grants(
            org_id="org-globex", model_ids=["cluster:tts", "cluster:embed"]
        )
    no_event(window)


# --- auto models -----------------------------------------------------------------------------


def test_setting_and_clearing_the_auto_model_records_endpoint_and_model(world, sdk_for):
    add_model(world.org_a, model_body("acme:chat-1", auth=AUTH), actor="test")
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    models = sdk_for(world.alice).llm.models
    with audited() as window:
        models.put_org_auto_model(endpoint="completions", model_id="acme:chat-1")
    event = the_event(
        window, "auto.set", actor=key_actor(world.alice), org=world.org_a, target="completions"
    )
    assert event.changes == {
        "endpoint": "completions",
        "model_id": "acme:chat-1",
        "previous_model_id": None,
    }

    with audited() as window:
        models.put_org_auto_model(
            endpoint="completions",
            model_id="chat-a",  # an alias: the event names the model it resolved to
            http_headers={"X-On-Behalf-Of": "end-user-42"},
        )
    event = the_event(
        window,
        "auto.set",
        actor=f"end-user-42 via {key_actor(world.alice)}",
        org=world.org_a,
        target="completions",
    )
    assert event.changes == {
        "endpoint": "completions",
        "model_id": "cluster:chat-a",
        "previous_model_id": "acme:chat-1",
    }

    with audited() as window:
        models.delete_org_auto_model(endpoint="completions")
    event = the_event(
        window, "auto.cleared", actor=key_actor(world.alice), org=world.org_a, target="completions"
    )
    assert event.changes == {"endpoint": "completions", "model_id": "cluster:chat-a"}

    # Clearing an endpoint with no override succeeds and records nothing.
    with audited() as window:
        models.delete_org_auto_model(endpoint="completions")
    no_event(window)


# --- keys ------------------------------------------------------------------------------------


def admin_user(org: Org) -> Client:
    user = get_user_model().objects.create_user("audit-admin", "audit-admin@example.com")
    Membership.objects.create(user=user, org=org, role=Role.ADMIN)
    client = Client()
    client.force_login(user)
    return client


def test_issuing_and_revoking_a_key_on_the_dashboard_records_both(world):
    client = admin_user(world.org_a)
    with audited() as window:
        response = client.post("/orgs/org-acme/keys", {"name": "deploy", "role": "admin"})
    assert response.status_code == 200
    key = ApiKey.objects.get(name="deploy")
    raw = response.content.decode().split('<code id="raw-key" class="secret">')[1].split("<")[0]
    assert raw.startswith(key.prefix)
    event = the_event(
        window,
        "key.issued",
        actor="user:audit-admin",
        org=world.org_a,
        target=key.prefix,
        extra_secrets=(raw, key.key_hash),
    )
    assert event.changes == {"name": "deploy", "role": "admin", "cluster_admin": False}

    with audited() as window:
        response = client.post(f"/orgs/org-acme/keys/revoke/{key.pk}")
    assert response.status_code == 302
    event = the_event(
        window,
        "key.revoked",
        actor="user:audit-admin",
        org=world.org_a,
        target=key.prefix,
        extra_secrets=(raw, key.key_hash),
    )
    assert event.changes == {"name": "deploy", "role": "admin", "cluster_admin": False}

    # Revoking it again changes nothing and records nothing.
    with audited() as window:
        client.post(f"/orgs/org-acme/keys/revoke/{key.pk}")
    no_event(window)


# --- refused writes --------------------------------------------------------------------------


def test_a_refused_write_records_nothing(world, sdk_for):
    add_model(world.org_a, model_body("acme:chat-1"), actor="test")
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    alice, bob = sdk_for(world.alice).llm.models, sdk_for(world.bob).llm.models
    dave, revoked = sdk_for(world.dave).llm.models, sdk_for(world.revoked).llm.models
    marker_auth = {"type": "api-key", "value": MARKER}
    refused: list[tuple[Any, dict[str, Any], int]] = [
        # 400: bad bodies
        (alice.add_registry_model, kwargs(model_body("acme:x", auth=marker_auth)), 400),
        (alice.update_registry_model, {"id": "acme:chat-1", "auth": marker_auth}, 400),
        (alice.put_org_auto_model, {"endpoint": "completions", "model_id": "auto"}, 400),
        (alice.put_org_auto_model, {"endpoint": "tts", "model_id": "acme:chat-1"}, 400),
        # 403: a member key, a non-cluster-admin key, an operator (YAML) model
        (bob.add_registry_model, kwargs(model_body("acme:x")), 403),
        (bob.update_registry_model, {"id": "acme:chat-1", "display_name": "x"}, 403),
        (bob.remove_registry_model, {"id": "acme:chat-1"}, 403),
        (bob.put_org_auto_model, {"endpoint": "completions", "model_id": "acme:chat-1"}, 403),
        (bob.delete_org_auto_model, {"endpoint": "completions"}, 403),
        (alice.put_cluster_registry_org_grants, {"org_id": "org-acme", "model_ids": []}, 403),
        (alice.update_registry_model, {"id": "cluster:chat-a", "display_name": "x"}, 403),
        (alice.remove_registry_model, {"id": "cluster:chat-a"}, 403),
        # 404: another org's model; 409: a taken id; 401: a revoked key
        (dave.remove_registry_model, {"id": "acme:chat-1"}, 404),
        (alice.add_registry_model, kwargs(model_body("acme:chat-1")), 409),
        (revoked.remove_registry_model, {"id": "acme:chat-1"}, 401),
    ]
    with audited() as window:
        for call, arguments, status in refused:
            exc = sdk_error(call, **arguments)
            assert exc.status_code == status, (call, exc.body)
        exc = sdk_error(
            sdk_for(world.carol).llm.models.put_cluster_registry_org_grants,
            org_id="org-acme",
            model_ids=["cluster:nope"],
        )
        assert_error(exc, 400, "invalid_request_error")
    no_event(window)
    assert list(ClusterGrant.objects.values_list("model_id", flat=True)) == ["cluster:chat-a"]
    assert list(RegistryModel.objects.values_list("registry_id", flat=True)) == ["acme:chat-1"]


@pytest.mark.parametrize(
    "data", [{"name": "x", "role": "owner"}, {"name": "x" * 300, "role": "member"}]
)
def test_a_refused_key_form_records_nothing(world, data):
    client = admin_user(world.org_a)
    with audited() as window:
        response = client.post("/orgs/org-acme/keys", data)
    assert response.status_code == 200 and b'id="raw-key"' not in response.content
    no_event(window)
    assert not ApiKey.objects.filter(name="x").exists()
