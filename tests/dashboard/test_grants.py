"""Grants: the matrix of orgs × operator models, toggled one cell (or one row) at a time."""

from __future__ import annotations

from orgs.models import AuditEvent
from orgs.services import create_org
from registry.models import AutoModel, ClusterGrant
from registry.services import set_auto_model
from tests.dashboard.conftest import HTMX


def grants_of(org) -> set[str]:
    return set(ClusterGrant.objects.filter(org=org).values_list("model_id", flat=True))


def test_the_matrix_shows_every_org_and_operator_model(people, login, granted):
    body = login(people.root).get("/grants").content.decode()
    assert 'id="grant-row-org-acme"' in body and 'id="grant-row-org-globex"' in body
    for model_id in ("cluster:chat-a", "cluster:chat-b", "cluster:embed", "cluster:tts"):
        assert model_id in body
    assert "2/5" in body and "0/5" in body
    assert body.count('aria-pressed="true"') == 2


def test_one_click_grants_and_returns_the_row(people, login, granted):
    response = login(people.root).post(
        "/grants/org-globex", {"action": "grant", "model": "cluster:chat-b"}, headers=HTMX
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert body.lstrip().startswith('<tr id="grant-row-org-globex"')
    assert "1/5" in body
    assert grants_of(people.org_b) == {"cluster:chat-b"}
    assert grants_of(people.org_a) == {"cluster:chat-a", "cluster:embed"}  # untouched
    event = AuditEvent.objects.get(action="grants.replaced", org_slug="org-globex")
    assert event.actor == "user:root"


def test_one_click_revokes_and_clears_auto_overrides(people, login, granted):
    set_auto_model(people.org_a, "completions", {"modelId": "cluster:chat-a"}, actor="test")
    body = (
        login(people.root)
        .post("/grants/org-acme", {"action": "revoke", "model": "cluster:chat-a"}, headers=HTMX)
        .content.decode()
    )
    assert "1/5" in body
    assert grants_of(people.org_a) == {"cluster:embed"}
    assert not AutoModel.objects.exists()


def test_a_repeated_click_is_idempotent(people, login, granted):
    client = login(people.root)
    for _ in range(2):
        client.post("/grants/org-acme", {"action": "grant", "model": "cluster:tts"}, headers=HTMX)
    assert grants_of(people.org_a) == {"cluster:chat-a", "cluster:embed", "cluster:tts"}


def test_grant_all_and_revoke_all(people, login, granted):
    client = login(people.root)
    body = client.post("/grants/org-globex", {"action": "grant-all"}, headers=HTMX).content.decode()
    assert "5/5" in body
    assert len(grants_of(people.org_b)) == 5
    body = client.post(
        "/grants/org-globex", {"action": "revoke-all"}, headers=HTMX
    ).content.decode()
    assert "0/5" in body
    assert grants_of(people.org_b) == set()


def test_an_unknown_model_is_an_inline_error(people, login, granted):
    body = (
        login(people.root)
        .post("/grants/org-acme", {"action": "grant", "model": "cluster:<b>nope"}, headers=HTMX)
        .content.decode()
    )
    assert "unknown cluster model" in body
    assert "&lt;b&gt;nope" in body and "<b>nope" not in body
    assert grants_of(people.org_a) == {"cluster:chat-a", "cluster:embed"}
    body = (
        login(people.root).post("/grants/org-acme", {"action": "x"}, headers=HTMX).content.decode()
    )
    assert "unknown action" in body


def test_without_javascript_it_redirects_back_with_the_search(people, login, granted):
    client = login(people.root)
    response = client.post(
        "/grants/org-acme", {"action": "grant", "model": "cluster:tts", "q": "acme", "page": "1"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/grants?q=acme&page=1"
    assert "Grants of org-acme updated." in client.get(response["Location"]).content.decode()


def test_unknown_org_is_404(people, login):
    assert login(people.root).post("/grants/org-nope", {"action": "grant-all"}).status_code == 404


def test_search_and_pagination(people, login):
    for index in range(30):
        create_org(f"org-x{index:02d}", f"Extra {index}")
    client = login(people.root)
    first = client.get("/grants").content.decode()
    assert first.count('<tr id="grant-row-') == 25
    assert "of 32 organisations" in first
    second = client.get("/grants", {"page": 2}).content.decode()
    assert second.count('<tr id="grant-row-') == 7
    found = client.get("/grants", {"q": "globex"}, headers=HTMX).content.decode()
    assert found.count('<tr id="grant-row-') == 1
    assert "<html" not in found
    assert "No organisation matches" in client.get("/grants", {"q": "zzz"}).content.decode()


def test_the_matrix_costs_a_fixed_number_of_queries(
    people, login, granted, django_assert_max_num_queries
):
    for index in range(30):
        create_org(f"org-x{index:02d}", f"Extra {index}")
    client = login(people.root)
    client.get("/grants")
    with django_assert_max_num_queries(8):
        client.get("/grants")
