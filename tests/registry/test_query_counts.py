"""Listing models costs a constant number of SQL queries, however many models an org has.

In-process (Django test `Client`), so pytest-django can count the queries."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from registry.models import HealthStatus, ModelAlias, RegistryModel
from registry.services import put_grants

PATHS = ["/api/v1/llm/models/registry", "/api/v1/llm/models"]


def grow_to(org: Any, make_model: Any, total: int) -> None:
    """Give the org `total` models: one through the service, the rest copied from it in bulk."""
    existing = RegistryModel.objects.filter(org=org).count()
    if existing == 0:
        make_model(org, "acme:m0000")
        existing = 1
    template = RegistryModel.objects.get(org=org, registry_id="acme:m0000")
    now = timezone.now()
    rows = []
    for index in range(existing, total):
        row = copy.copy(template)
        row.pk = None
        row.id = None
        row.registry_id = f"acme:m{index:04d}"
        row.definition = {**template.definition, "id": row.registry_id}
        row.hidden = index % 7 == 0
        if row.hidden:
            row.definition["hidden"] = True
        if index % 5 == 0:  # every fifth model has an alias (a row per alias, as add_model makes)
            row.definition["aliases"] = [f"acme-alias-{index:04d}"]
        row.created_at = row.updated_at = now + timedelta(microseconds=index)
        rows.append(row)
    RegistryModel.objects.bulk_create(rows)
    created = RegistryModel.objects.filter(org=org).order_by("registry_id")
    ModelAlias.objects.bulk_create(
        [
            ModelAlias(org=org, alias=alias, model=m)
            for m in created
            for alias in m.definition.get("aliases", [])
            if m.registry_id != "acme:m0000"
            and not ModelAlias.objects.filter(org=org, alias=alias).exists()
        ]
    )
    HealthStatus.objects.bulk_create(
        [
            HealthStatus(target=m.health_key, is_available=index % 2 == 0, checked_at=now)
            for index, m in enumerate(created)
            if index % 3 == 0 and not HealthStatus.objects.filter(target=m.health_key).exists()
        ]
    )
    assert RegistryModel.objects.filter(org=org).count() == total


def count_queries(client: Any, path: str, token: str, assert_max: Any, limit: int) -> int:
    with assert_max(limit) as captured:
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return len(captured.captured_queries)


@pytest.mark.parametrize("path", PATHS)
def test_listing_costs_the_same_queries_for_5_and_500_models(
    world, make_model, client, django_assert_max_num_queries, path
):
    put_grants(world.org_a, ["cluster:chat-a", "cluster:hidden-chat", "cluster:tts"], actor="t")
    token = world.alice.token
    grow_to(world.org_a, make_model, 5)
    # Warm up: the first use of a key records last_used_at.
    client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")

    small = count_queries(client, path, token, django_assert_max_num_queries, 20)
    assert small > 0
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert len(response.json()["data"]) >= 5

    grow_to(world.org_a, make_model, 500)
    large = count_queries(client, path, token, django_assert_max_num_queries, small)
    assert large == small

    data = client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}").json()["data"]
    ids = [item["id"] for item in data]
    assert ids == sorted(ids)
    assert ModelAlias.objects.filter(org=world.org_a).count() >= 99  # aliases were listed too
    if path.endswith("/registry"):
        assert len(data) == 500 + 3
    else:
        hidden = sum(1 for i in range(1, 500) if i % 7 == 0)  # m0000 is not hidden
        assert len(data) == 500 - hidden + 2
