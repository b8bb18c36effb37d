"""Deleting an org model: confirm first (a page, or a modal with htmx), then POST."""

from __future__ import annotations

from orgs.models import AuditEvent
from registry.models import AutoModel, RegistryModel
from registry.services import set_auto_model
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/models/delete/acme:chat-1"


def test_get_asks_for_confirmation_and_changes_nothing(people, login, make_model):
    make_model(people.org_a)
    page = login(people.alice).get(URL)
    assert page.status_code == 200
    body = page.content.decode()
    assert "<html" in body and "Delete <span" in body
    assert f'action="{URL}"' in body
    assert 'class="modal' not in body  # a plain page without htmx
    assert RegistryModel.objects.filter(registry_id="acme:chat-1").exists()


def test_htmx_gets_a_modal(people, login, make_model):
    make_model(people.org_a)
    body = login(people.alice).get(URL, headers=HTMX).content.decode()
    assert "<html" not in body
    assert 'role="dialog"' in body and 'aria-modal="true"' in body
    assert "data-close-modal" in body


def test_post_deletes_and_redirects_with_a_message(people, login, make_model):
    make_model(people.org_a)
    set_auto_model(people.org_a, "completions", {"modelId": "acme:chat-1"}, actor="test")
    client = login(people.alice)
    response = client.post(URL)
    assert response.status_code == 302
    assert response["Location"] == "/orgs/org-acme/models"
    assert not RegistryModel.objects.filter(registry_id="acme:chat-1").exists()
    assert not AutoModel.objects.exists()
    assert AuditEvent.objects.get(action="model.removed").actor == "user:alice"
    assert "Model acme:chat-1 deleted." in client.get("/orgs/org-acme/models").content.decode()


def test_htmx_post_redirects_on_the_client(people, login, make_model):
    make_model(people.org_a)
    response = login(people.alice).post(URL, headers=HTMX)
    assert response["HX-Redirect"] == "/orgs/org-acme/models"


def test_operator_and_foreign_models_cannot_be_deleted(people, login, make_model, granted):
    make_model(people.org_b, "globex:chat")
    client = login(people.alice)
    assert client.post("/orgs/org-acme/models/delete/cluster:chat-a").status_code == 404
    assert client.post("/orgs/org-acme/models/delete/globex:chat").status_code == 404
    assert client.post("/orgs/org-globex/models/delete/globex:chat").status_code == 404
    assert RegistryModel.objects.filter(registry_id="globex:chat").exists()
