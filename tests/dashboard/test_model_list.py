"""The models page: the table, search, filters, sorting, pagination and its query count."""

from __future__ import annotations

import copy
import re
from datetime import timedelta

from django.utils import timezone

from registry.models import HealthStatus, RegistryModel
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/models"


def ids_in(body: bytes) -> list[str]:
    return re.findall(r'<td class="mono" hx-disable>([^<]+)</td>', body.decode())


def test_it_lists_org_and_granted_models(people, login, make_model, granted):
    make_model(people.org_a, "acme:chat-1", displayName="Chat one", rpm=60)
    make_model(people.org_b, "globex:secret-model")
    body = login(people.bob).get(URL).content
    assert ids_in(body) == ["acme:chat-1", "cluster:chat-a", "cluster:embed"]
    text = body.decode()
    assert "Chat one" in text
    assert "operator · read-only" in text
    assert "org model" in text
    assert "globex:secret-model" not in text
    assert "Showing 1–3 of 3 models" in text


def test_members_see_no_edit_links(people, login, make_model):
    make_model(people.org_a)
    member = login(people.bob).get(URL).content.decode()
    assert "/models/edit/" not in member
    assert "/models/delete/" not in member
    assert "Add a model" not in member
    admin = login(people.alice).get(URL).content.decode()
    assert "/orgs/org-acme/models/edit/acme:chat-1" in admin
    assert "/orgs/org-acme/models/delete/acme:chat-1" in admin


def test_operator_models_cannot_be_edited(people, login, granted):
    body = login(people.alice).get(URL).content.decode()
    assert "/models/edit/cluster:" not in body


def test_health_badges(people, login, make_model):
    up = make_model(people.org_a, "acme:up")
    down = make_model(people.org_a, "acme:down")
    make_model(people.org_a, "acme:never")
    now = timezone.now()
    HealthStatus.objects.create(target=up.health_key, is_available=True, checked_at=now)
    HealthStatus.objects.create(
        target=down.health_key, is_available=False, checked_at=now, error="HTTP 503"
    )
    client = login(people.alice)
    assert ids_in(client.get(URL, {"health": "up"}).content) == ["acme:up"]
    assert ids_in(client.get(URL, {"health": "down"}).content) == ["acme:down"]
    assert ids_in(client.get(URL, {"health": "unknown"}).content) == ["acme:never"]
    assert 'title="HTTP 503">down' in client.get(URL).content.decode()


def test_search_and_filters(people, login, make_model, granted):
    make_model(people.org_a, "acme:chat-1", displayName="Friendly Chat")
    make_model(people.org_a, "acme:embed", apiFormat="embeddings", aliases=["vectors"])
    client = login(people.alice)
    assert ids_in(client.get(URL, {"q": "friendly"}).content) == ["acme:chat-1"]
    assert ids_in(client.get(URL, {"q": "VECTORS"}).content) == ["acme:embed"]
    assert ids_in(client.get(URL, {"source": "yaml"}).content) == [
        "cluster:chat-a",
        "cluster:embed",
    ]
    assert ids_in(client.get(URL, {"format": "embeddings", "source": "database"}).content) == [
        "acme:embed"
    ]
    # Bad filter values are ignored rather than an error.
    assert (
        len(ids_in(client.get(URL, {"format": "bogus", "sort": "nope", "page": "x"}).content)) == 4
    )


def test_the_filtered_fragment_comes_back_for_htmx(people, login, make_model):
    make_model(people.org_a, "acme:one")
    make_model(people.org_a, "acme:two")
    response = login(people.alice).get(URL, {"q": "two"}, headers=HTMX)
    assert b"<html" not in response.content
    assert response.content.decode().lstrip().startswith('<section id="model-table"')
    assert ids_in(response.content) == ["acme:two"]


def test_empty_states(people, login, make_model):
    client = login(people.alice)
    assert "This org has no models yet" in client.get(URL).content.decode()
    make_model(people.org_a)
    body = client.get(URL, {"q": "zzz"}).content.decode()
    assert "No models match these filters" in body


def test_sorting_by_a_column_header(people, login, make_model):
    make_model(people.org_a, "acme:a", contextWindow=100)
    make_model(people.org_a, "acme:b", contextWindow=300)
    make_model(people.org_a, "acme:c", contextWindow=None)
    client = login(people.alice)
    assert ids_in(client.get(URL, {"sort": "context"}).content) == ["acme:a", "acme:b", "acme:c"]
    # Descending; models without a value stay last.
    assert ids_in(client.get(URL, {"sort": "-context"}).content) == ["acme:b", "acme:a", "acme:c"]
    body = client.get(URL, {"sort": "context"}).content.decode()
    assert 'aria-sort="ascending"' in body
    assert "sort=-context" in body  # clicking again reverses


def grow(org, make_model, total: int) -> None:
    """`total` org models: one through the service, the rest copied in bulk."""
    template = make_model(org, "acme:m0000")
    now = timezone.now()
    rows = []
    for index in range(1, total):
        row = copy.copy(template)
        row.pk = row.id = None
        row.registry_id = f"acme:m{index:04d}"
        row.definition = {**template.definition, "id": row.registry_id}
        row.created_at = row.updated_at = now + timedelta(microseconds=index)
        rows.append(row)
    RegistryModel.objects.bulk_create(rows)
    HealthStatus.objects.bulk_create(
        [
            HealthStatus(target=m.health_key, is_available=i % 2 == 0, checked_at=now)
            for i, m in enumerate(RegistryModel.objects.filter(org=org))
            if i % 3 == 0
        ]
    )


def test_pagination_50_per_page(people, login, make_model):
    grow(people.org_a, make_model, 120)
    client = login(people.alice)
    first = client.get(URL)
    assert len(ids_in(first.content)) == 50
    assert "Showing 1–50 of 120 models" in first.content.decode()
    third = client.get(URL, {"page": 3, "sort": "-id"})
    assert ids_in(third.content)[0] == "acme:m0019"
    assert len(ids_in(third.content)) == 20
    assert "Showing 101–120 of 120 models" in third.content.decode()
    # Page links keep the sort order.
    assert "?page=2&amp;sort=-id" in third.content.decode()


def test_the_list_costs_a_fixed_number_of_queries(
    people, login, make_model, granted, django_assert_max_num_queries
):
    grow(people.org_a, make_model, 200)
    client = login(people.alice)
    client.get(URL)  # the session already knows the org
    with django_assert_max_num_queries(8):
        response = client.get(URL)
    assert response.status_code == 200
    assert "of 202 models" in response.content.decode()
    with django_assert_max_num_queries(8):
        client.get(URL, {"q": "m01", "sort": "-health", "page": 2}, headers=HTMX)
