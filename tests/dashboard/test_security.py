"""Secrets never reach a page, and names from users or upstreams are always escaped (W1, W5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.utils import timezone

from orgs.models import Org
from orgs.services import issue_api_key
from registry.models import HealthStatus, RegistryModel
from tests.dashboard.conftest import CANARY, HEADER_CANARY, HTMX, form_data

CLUSTER_CANARY = "sk-canary-cluster-secret"  # in tests/fixtures/cluster_registry.yaml
SECRETS = (CANARY, HEADER_CANARY, CLUSTER_CANARY)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def secret_models(people, make_model, granted):
    make_model(people.org_a, "acme:key")
    make_model(
        people.org_a,
        "acme:headers",
        auth={"type": "custom-headers", "headers": {"X-Key": HEADER_CANARY}},
    )
    make_model(
        people.org_a,
        "acme:composite",
        auth={
            "type": "composite",
            "strategies": [
                {"type": "api-key", "value": CANARY},
                {"type": "custom-headers", "headers": {"X-H": HEADER_CANARY}},
            ],
        },
    )
    return ["acme:key", "acme:headers", "acme:composite"]


def every_page(client, model_ids, key_id, *, superuser: bool = True) -> list[str]:
    """Every GET page of org A, whole and as htmx fragments, plus failed form posts."""
    org = "/orgs/org-acme"
    urls = [
        "/",
        f"{org}/models",
        f"{org}/models?q=acme",
        f"{org}/models/new",
        f"{org}/auto",
        f"{org}/health",
        f"{org}/keys",
        f"{org}/keys/revoke/{key_id}",
    ]
    if superuser:
        urls.append("/grants")
    for model_id in model_ids:
        urls += [f"{org}/models/edit/{model_id}", f"{org}/models/delete/{model_id}"]
    bodies = []
    for url in urls:
        for headers in ({}, HTMX):
            response = client.get(url, headers=headers, follow=True)
            assert response.status_code == 200, url
            bodies.append(response.content.decode())
    for model_id in model_ids:
        edit = f"{org}/models/edit/{model_id}"
        form = client.get(edit).context["form"]
        data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
        data["rpm"] = "-1"  # invalid: the form comes back
        for url in (edit, f"{org}/models/test/{model_id}"):
            bodies.append(client.post(url, data).content.decode())
            bodies.append(client.post(url, data, headers=HTMX).content.decode())
    return bodies


def test_no_page_ever_shows_a_provider_secret(people, login, secret_models):
    key, _ = issue_api_key(people.org_a, name="k")
    for user in (people.root, people.alice):
        pages = every_page(login(user), secret_models, key.pk, superuser=user.is_superuser)
        for body in pages:
            for secret in SECRETS:
                assert secret not in body
    # Nor the Django admin's pages of the same models.
    client = login(people.root)
    for model in RegistryModel.objects.all():
        body = client.get(f"/admin/registry/registrymodel/{model.pk}/change/").content.decode()
        for secret in SECRETS:
            assert secret not in body


def test_secrets_typed_into_a_failing_form_are_not_echoed(people, login):
    client = login(people.alice)
    composite = json.dumps(
        {"type": "composite", "strategies": [{"type": "api-key", "value": CANARY}]}
    )
    for data in (
        form_data(rpm="-1"),
        form_data(rpm="-1", auth_type="custom-headers", auth_headers=f"X-K: {HEADER_CANARY}"),
        form_data(rpm="-1", auth_type="composite", auth_composite=composite),
    ):
        for url in ("/orgs/org-acme/models/new", "/orgs/org-acme/models/test"):
            for headers in ({}, HTMX):
                body = client.post(url, data, headers=headers).content.decode()
                assert CANARY not in body and HEADER_CANARY not in body


XSS = [
    "<script>alert(1)</script>",
    '"><svg onload=alert(1)>',
    "<img src=x onerror=alert(1)>",
    "' hx-get='/logout' hx-trigger='load",
]


def test_names_from_users_and_upstreams_are_escaped(people, login, make_model, granted):
    Org.objects.filter(pk=people.org_a.pk).update(name=XSS[0] + " org")
    model = make_model(
        people.org_a,
        "acme:xss",
        displayName=XSS[0],
        provider=XSS[1],
        modelId=XSS[2],
        publicName=XSS[3],
    )
    HealthStatus.objects.create(
        target=model.health_key, is_available=False, checked_at=timezone.now(), error=XSS[2]
    )
    key, _ = issue_api_key(people.org_a, name=XSS[2])
    client = login(people.root)
    bodies = every_page(client, ["acme:xss"], key.pk)
    bodies.append(client.get("/orgs/org-acme/auto").content.decode())
    for body in bodies:
        for payload in XSS[:3]:
            assert payload not in body
        assert "hx-get='/logout'" not in body
    models_page = client.get("/orgs/org-acme/models").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in models_page
    edit = client.get("/orgs/org-acme/models/edit/acme:xss").content.decode()
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in edit
    assert "&#x27; hx-get=&#x27;/logout&#x27;" in edit


def test_user_content_areas_carry_hx_disable(people, login, make_model):
    make_model(people.org_a, "acme:xss", displayName=XSS[0])
    body = login(people.alice).get("/orgs/org-acme/models").content.decode()
    assert "<td hx-disable>&lt;script&gt;" in body


def test_templates_and_views_never_mark_text_safe():
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        assert "|safe" not in text and "autoescape off" not in text, path
    for path in (ROOT / "dashboard").rglob("*.py"):
        assert "mark_safe" not in path.read_text(), path
