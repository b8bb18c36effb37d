"""API keys: issue (shown once), list (never the hash), revoke with confirmation."""

from __future__ import annotations

import json

from orgs.models import ApiKey, hash_key
from orgs.services import issue_api_key
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/keys"


def test_the_list_shows_keys_but_never_hashes(people, login):
    key, raw = issue_api_key(people.org_a, name="ci", actor="test")
    issue_api_key(people.org_b, name="globex key")
    body = login(people.alice).get(URL).content.decode()
    assert key.prefix in body and "ci" in body
    assert key.key_hash not in body and raw not in body
    assert "globex key" not in body
    assert "never" in body  # last used


def test_issuing_shows_the_raw_key_once(people, login):
    client = login(people.alice)
    response = client.post(URL, {"name": "deploy", "role": "admin"}, headers=HTMX)
    body = response.content.decode()
    assert "<html" not in body
    key = ApiKey.objects.get(name="deploy")
    assert key.role == "admin" and key.cluster_admin is False and key.created_by == "user:alice"
    raw = body.split('<code id="raw-key" class="secret">')[1].split("</code>")[0]
    assert raw.startswith(key.prefix)
    assert hash_key(raw) == key.key_hash
    assert "it will not be shown again" in body
    assert 'hx-history="false"' in body
    assert "no-store" in response["Cache-Control"]
    # Never again.
    assert raw not in client.get(URL).content.decode()
    assert raw not in client.get(URL, headers=HTMX).content.decode()


def test_issuing_without_javascript_renders_the_page(people, login):
    response = login(people.alice).post(URL, {"name": "x", "role": "member"})
    assert response.status_code == 200
    assert b"<html" in response.content and b'id="raw-key"' in response.content


def test_only_superusers_may_issue_cluster_admin_keys(people, login):
    assert 'name="cluster_admin"' not in login(people.alice).get(URL).content.decode()
    login(people.alice).post(URL, {"name": "sneaky", "role": "admin", "cluster_admin": "on"})
    assert ApiKey.objects.get(name="sneaky").cluster_admin is False
    assert 'name="cluster_admin"' in login(people.root).get(URL).content.decode()
    login(people.root).post(URL, {"name": "ops", "role": "admin", "cluster_admin": "on"})
    assert ApiKey.objects.get(name="ops").cluster_admin is True


def test_an_invalid_role_is_a_form_error(people, login):
    response = login(people.alice).post(URL, {"name": "x", "role": "owner"})
    assert response.status_code == 200
    assert b"Select a valid choice" in response.content
    assert not ApiKey.objects.exists()


def test_revoke_asks_first(people, login):
    key, _ = issue_api_key(people.org_a, name="old")
    client = login(people.alice)
    page = client.get(f"{URL}/revoke/{key.pk}")
    assert page.status_code == 200 and b"<html" in page.content
    assert b"hx-post" not in page.content.split(b"<main")[1]  # a plain form on its own page
    modal = client.get(f"{URL}/revoke/{key.pk}", headers=HTMX).content.decode()
    assert 'role="dialog"' in modal and f'hx-target="#key-{key.pk}"' in modal
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoke_in_the_modal_swaps_the_row_and_closes_it(people, login):
    key, _ = issue_api_key(people.org_a, name="old")
    response = login(people.alice).post(f"{URL}/revoke/{key.pk}", headers=HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="key-{key.pk}" class="revoked"')
    assert "revoked" in body
    assert json.loads(response["HX-Trigger"]) == {"closeModal": {}}
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_revoke_without_javascript_redirects(people, login):
    key, _ = issue_api_key(people.org_a, name="old")
    client = login(people.alice)
    response = client.post(f"{URL}/revoke/{key.pk}")
    assert response.status_code == 302 and response["Location"] == URL
    assert f"Key {key.prefix}… revoked." in client.get(URL).content.decode()


def test_another_orgs_key_cannot_be_revoked(people, login):
    key, _ = issue_api_key(people.org_b, name="theirs")
    assert login(people.alice).post(f"{URL}/revoke/{key.pk}").status_code == 404
    assert login(people.alice).get(f"{URL}/revoke/{key.pk}").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
