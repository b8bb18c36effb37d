"""Who may reach what, for every page and action of the dashboard.

Anonymous → the login page; another org's user → 404 (no existence oracle); a member → read
only (403 on changes); grants → superusers only; wrong method → 405; POST without a CSRF token
→ 403 with nothing changed; each page answers htmx with a fragment and varies on HX-Request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from orgs.models import ApiKey, AuditEvent
from orgs.services import issue_api_key
from registry.models import AutoModel, ClusterGrant, RegistryModel
from tests.dashboard.conftest import HTMX


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str  # the method that works
    path: str  # {key} is filled with an API key id of org A
    who: str  # "member" (any member), "admin" (org admins), "cluster" (superusers)
    wrong: str  # a method that gives 405
    data: tuple[tuple[str, str], ...] = ()


ENDPOINTS = [
    Endpoint("models", "GET", "/orgs/org-acme/models", "member", "POST"),
    Endpoint("model-create-form", "GET", "/orgs/org-acme/models/new", "admin", "PUT"),
    Endpoint("model-create", "POST", "/orgs/org-acme/models/new", "admin", "DELETE"),
    Endpoint("model-edit-form", "GET", "/orgs/org-acme/models/edit/acme:chat-1", "admin", "PUT"),
    Endpoint(
        "model-edit",
        "POST",
        "/orgs/org-acme/models/edit/acme:chat-1",
        "admin",
        "PATCH",
        (("provider", "x"),),
    ),
    Endpoint(
        "model-delete-confirm", "GET", "/orgs/org-acme/models/delete/acme:chat-1", "admin", "PUT"
    ),
    Endpoint("model-delete", "POST", "/orgs/org-acme/models/delete/acme:chat-1", "admin", "DELETE"),
    Endpoint("model-test", "POST", "/orgs/org-acme/models/test", "admin", "GET"),
    Endpoint("model-test-stored", "POST", "/orgs/org-acme/models/test/acme:chat-1", "admin", "GET"),
    Endpoint("auto", "GET", "/orgs/org-acme/auto", "member", "POST"),
    Endpoint(
        "auto-set",
        "POST",
        "/orgs/org-acme/auto/completions",
        "admin",
        "GET",
        (("action", "set"), ("model_id", "acme:chat-1")),
    ),
    Endpoint("health", "GET", "/orgs/org-acme/health", "member", "POST"),
    Endpoint("health-check", "POST", "/orgs/org-acme/health/check/acme:chat-1", "admin", "GET"),
    Endpoint("keys", "GET", "/orgs/org-acme/keys", "admin", "DELETE"),
    Endpoint("key-issue", "POST", "/orgs/org-acme/keys", "admin", "PUT", (("role", "member"),)),
    Endpoint("key-revoke-confirm", "GET", "/orgs/org-acme/keys/revoke/{key}", "admin", "PUT"),
    Endpoint("key-revoke", "POST", "/orgs/org-acme/keys/revoke/{key}", "admin", "DELETE"),
    Endpoint("grants", "GET", "/grants", "cluster", "POST"),
    Endpoint(
        "grant-toggle",
        "POST",
        "/grants/org-acme",
        "cluster",
        "GET",
        (("action", "grant"), ("model", "cluster:chat-a")),
    ),
]
ORG_ENDPOINTS = [e for e in ENDPOINTS if e.who != "cluster"]
GET_PAGES = [e for e in ENDPOINTS if e.method == "GET"]
POSTS = [e for e in ENDPOINTS if e.method == "POST"]


@pytest.fixture
def setup(people: Any, make_model: Any, settings: Any) -> dict[str, Any]:
    # A closed loopback port: "Check now" and "Test connection" fail fast, without DNS.
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    make_model(people.org_a, baseUrl="http://127.0.0.1:9/v1")
    make_model(people.org_b, "globex:chat")
    key, _ = issue_api_key(people.org_a, name="a key")
    return {"key": key.pk}


def url(endpoint: Endpoint, setup: dict[str, Any]) -> str:
    return endpoint.path.format(key=setup["key"])


def call(client: Any, endpoint: Endpoint, setup: dict[str, Any], **kwargs: Any) -> Any:
    method = getattr(client, endpoint.method.lower())
    if endpoint.method == "POST":
        return method(url(endpoint, setup), dict(endpoint.data), **kwargs)
    return method(url(endpoint, setup), **kwargs)


def snapshot() -> tuple[Any, ...]:
    return (
        list(RegistryModel.objects.values_list("registry_id", "definition", "updated_at")),
        list(ApiKey.objects.values_list("prefix", "revoked_at")),
        list(ClusterGrant.objects.values_list("org_id", "model_id")),
        list(AutoModel.objects.values_list("org_id", "endpoint", "model_id")),
        AuditEvent.objects.count(),
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_anonymous_is_sent_to_login(endpoint, setup, login):
    before = snapshot()
    response = call(login(), endpoint, setup)
    assert response.status_code == 302
    assert response["Location"].startswith("/login?next=")
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_wrong_method_is_405(endpoint, setup, people, login):
    response = getattr(login(people.root), endpoint.wrong.lower())(url(endpoint, setup))
    assert response.status_code == 405


@pytest.mark.parametrize("endpoint", ORG_ENDPOINTS, ids=lambda e: e.name)
def test_another_orgs_user_gets_404(endpoint, setup, people, login):
    before = snapshot()
    for client in (login(people.dave), login(people.nobody)):
        assert call(client, endpoint, setup).status_code == 404
        assert call(client, endpoint, setup, headers=HTMX).status_code == 404
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ORG_ENDPOINTS, ids=lambda e: e.name)
def test_members_may_look_but_not_change(endpoint, setup, people, login):
    before = snapshot()
    response = call(login(people.bob), endpoint, setup)
    if endpoint.who == "member":
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert b"Not allowed" in response.content
        assert snapshot() == before


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.who == "cluster"], ids=str)
def test_cluster_pages_are_for_superusers_only(endpoint, setup, people, login):
    before = snapshot()
    for user in (people.alice, people.bob, people.dave):
        assert call(login(user), endpoint, setup).status_code == 403
    assert snapshot() == before
    assert call(login(people.root), endpoint, setup).status_code in (200, 302)


def test_an_unknown_org_is_404_even_for_superusers(setup, people, login):
    assert login(people.root).get("/orgs/org-nope/models").status_code == 404
    assert login(people.root).get("/orgs/org-acme/models/edit/acme:nope").status_code == 404


@pytest.mark.parametrize("endpoint", POSTS, ids=lambda e: e.name)
def test_posts_need_a_csrf_token(endpoint, setup, people, login):
    before = snapshot()
    client = login(people.root, enforce_csrf_checks=True)
    assert call(client, endpoint, setup).status_code == 403
    assert call(client, endpoint, setup, headers=HTMX).status_code == 403
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", GET_PAGES, ids=lambda e: e.name)
def test_pages_are_whole_and_fragments_for_htmx(endpoint, setup, people, login):
    client = login(people.root)
    page = call(client, endpoint, setup)
    assert page.status_code == 200
    assert b"<html" in page.content
    assert "HX-Request" in page.get("Vary", "")
    fragment = call(client, endpoint, setup, headers=HTMX)
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content
    assert fragment.content.strip()
    # A history restore needs the whole page again.
    restore = call(client, endpoint, setup, headers={**HTMX, "HX-History-Restore-Request": "true"})
    assert b"<html" in restore.content


def test_every_page_sends_the_csrf_token_once_through_hx_headers(setup, people, login):
    client = login(people.root)
    for endpoint in GET_PAGES:
        body = call(client, endpoint, setup).content.decode()
        assert body.count('hx-headers=\'{"X-CSRFToken": "') == 1, endpoint.name
        assert "<body hx-headers=" in body
        assert "js:" not in body.split("hx-headers=")[1][:20]


def test_htmx_is_vendored_not_from_a_cdn(setup, people, login):
    body = login(people.alice).get("/orgs/org-acme/models").content.decode()
    assert '<script src="/static/vendor/htmx.min.js"' in body
    assert '<script src="/static/vendor/sse.js"' in body
    assert "https://" not in body.split("</head>")[0]
