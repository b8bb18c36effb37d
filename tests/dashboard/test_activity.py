"""The activity page: the audit trail, newest first, 50 a page, filtered by actor, kind and date;
org admins see their org, superusers any org or all of them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from orgs.models import AuditEvent
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/activity"
XSS = "<img src=x onerror=alert(1)>"


def event(org: Any, days_ago: float = 0, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "org": org,
        "org_slug": org.slug if org else "",
        "actor": "user:alice",
        "action": "model.add",
        "target": "acme:chat-1",
        "changes": {"rpm": [None, 60]},
        "created_at": timezone.now() - timedelta(days=days_ago),
    }
    values.update(fields)
    return AuditEvent(**values)


@pytest.fixture
def trail(people: Any) -> None:
    AuditEvent.objects.all().delete()  # creating the orgs was audited too
    AuditEvent.objects.bulk_create(
        [
            event(people.org_a, days_ago=3, action="model.add", target="acme:old"),
            event(people.org_a, days_ago=1, actor="user:bob", action="key.issue", target="k1"),
            event(people.org_a, action="grant.put", actor="user:root", target="cluster:chat-a"),
            event(people.org_b, action="model.add", actor="user:dave", target="globex:chat"),
            event(None, action="cluster.reload", actor="system", target="registry.yaml"),
        ]
    )


def targets(body: str) -> list[str]:
    return re.findall(r'<td class="mono wrap" hx-disable>([^<]*)</td>', body)


def test_newest_first_and_only_this_org(people, login, trail):
    body = login(people.alice).get(URL).content.decode()
    assert targets(body) == ["cluster:chat-a", "k1", "acme:old"]
    assert "globex:chat" not in body and "registry.yaml" not in body
    assert "Showing 1–3 of 3 events." in body


def test_filters_by_actor_kind_and_date(people, login, trail):
    client = login(people.alice)
    assert targets(client.get(URL + "?actor=bob").content.decode()) == ["k1"]
    assert targets(client.get(URL + "?action=model.add").content.decode()) == ["acme:old"]
    today = timezone.now().date()
    since = today - timedelta(days=1)
    body = client.get(f"{URL}?start={since}&end={today}").content.decode()
    assert targets(body) == ["cluster:chat-a", "k1"]
    body = client.get(f"{URL}?end={today - timedelta(days=2)}").content.decode()
    assert targets(body) == ["acme:old"]
    # The kinds to pick from are the recorded ones.
    assert '<option value="key.issue">key.issue</option>' in client.get(URL).content.decode()


def test_fifty_a_page(people, login):
    AuditEvent.objects.all().delete()
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        [
            event(people.org_a, target=f"t{i:03}", created_at=now - timedelta(minutes=i))
            for i in range(120)
        ]
    )
    client = login(people.alice)
    first = client.get(URL).content.decode()
    assert targets(first) == [f"t{i:03}" for i in range(50)]
    third = client.get(URL + "?page=3", headers=HTMX).content.decode()
    assert targets(third) == [f"t{i:03}" for i in range(100, 120)]
    assert "<html" not in third and "Showing 101–120 of 120 events." in third
    assert 'href="?page=2"' in third


def test_a_page_costs_a_fixed_number_of_queries(people, login, django_assert_max_num_queries):
    AuditEvent.objects.bulk_create([event(people.org_a, target=f"t{i}") for i in range(200)])
    client = login(people.alice)
    client.get(URL)
    with django_assert_max_num_queries(8):
        client.get(URL + "?page=2")


def test_changes_are_compact_json_and_escaped(people, login):
    AuditEvent.objects.all().delete()
    AuditEvent.objects.bulk_create(
        [
            event(people.org_a, actor=XSS, target=XSS, changes={"displayName": [None, XSS]}),
            event(people.org_a, target="big", changes={f"field{i}": "x" * 20 for i in range(20)}),
        ]
    )
    body = login(people.alice).get(URL).content.decode()
    assert XSS not in body
    assert (
        "<code>{&quot;displayName&quot;: [null, &quot;&lt;img src=x onerror=alert(1)&gt;&quot;]}</code>"
        in body
    )
    assert "<details><summary><code>{&quot;field0&quot;" in body  # long: a preview, then all


def test_superusers_pick_an_org_or_all(people, login, trail):
    client = login(people.root)
    body = client.get(URL).content.decode()
    assert targets(body) == ["cluster:chat-a", "k1", "acme:old"]
    assert '<option value="*">All orgs</option>' in body
    body = client.get(URL + "?org=*").content.decode()
    assert targets(body) == ["registry.yaml", "globex:chat", "cluster:chat-a", "k1", "acme:old"]
    assert ">(cluster)</td>" in body and ">org-globex</td>" in body  # the org column
    assert targets(client.get(URL + "?org=org-globex").content.decode()) == ["globex:chat"]
    # Org admins have no org filter: it is ignored, not obeyed.
    alice = login(people.alice).get(URL + "?org=*").content.decode()
    assert 'id="id_org"' not in alice and "globex:chat" not in alice


def test_invalid_filters_are_shown_and_ignored(people, login, trail):
    today = timezone.now().date()
    response = login(people.alice).get(f"{URL}?start={today}&end={today - timedelta(days=5)}")
    body = response.content.decode()
    assert response.status_code == 200
    assert "The last day is before the first." in body
    assert "The filters are ignored until they are fixed." in body
    assert len(targets(body)) == 3
    body = login(people.alice).get(URL + "?action=nope&start=soon").content.decode()
    assert "Select a valid choice" in body and "Enter a valid date." in body


def test_access(people, login, trail):
    anonymous = Client().get(URL)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login?next=")
    assert login(people.bob).get(URL).status_code == 403
    assert login(people.dave).get(URL).status_code == 404
    assert login(people.nobody).get(URL).status_code == 404
    assert login(people.alice).post(URL).status_code == 405


def test_htmx_gets_the_table(people, login, trail):
    response = login(people.alice).get(URL + "?actor=bob", headers=HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    assert '<section id="activity-panel"' in body and targets(body) == ["k1"]
    assert "HX-Request" in response["Vary"]


def test_the_nav_links_the_new_pages_by_role(people, login):
    bob = login(people.bob).get("/orgs/org-acme/playground").content.decode()
    nav = bob.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
    assert 'href="/orgs/org-acme/playground" aria-current="page"' in nav
    assert 'href="/orgs/org-acme/batches"' in nav
    assert "/usage" not in nav and "/activity" not in nav  # org admins only
    alice = login(people.alice).get(URL).content.decode()
    nav = alice.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
    assert 'href="/orgs/org-acme/usage"' in nav
    assert 'href="/orgs/org-acme/activity" aria-current="page"' in nav
    assert "nav-placeholder" not in nav


@pytest.mark.parametrize(
    "path", ["playground", "usage", "activity", "batches", "files"], ids=lambda p: p
)
def test_new_pages_send_the_csrf_token_once_and_no_inline_script(people, login, path):
    body = login(people.alice).get(f"/orgs/org-acme/{path}").content.decode()
    assert body.count('hx-headers=\'{"X-CSRFToken": "') == 1
    assert "<script>" not in body and " on" + "click=" not in body
    assert "https://" not in body.split("</head>")[0]
