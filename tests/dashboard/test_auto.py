"""Auto models: one row per endpoint; org admins set and clear overrides in place."""

from __future__ import annotations

from registry.models import AutoModel
from registry.schemas import API_FORMATS
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/auto"


def test_one_row_per_endpoint_with_its_effective_model(people, login, granted, make_model):
    make_model(people.org_a, "acme:chat-1")
    AutoModel.objects.create(
        org=people.org_a, endpoint="embeddings", model_id="cluster:embed", set_by="user:alice"
    )
    body = login(people.alice).get(URL).content.decode()
    for endpoint in API_FORMATS:
        assert f'id="auto-{endpoint}"' in body
    completions = body.split('id="auto-completions"')[1].split("</tr>")[0]
    assert "cluster:chat-a" in completions and "operator default" in completions
    # The select offers only completions models the org can use.
    assert 'value="acme:chat-1"' in completions
    assert "cluster:embed" not in completions
    embeddings = body.split('id="auto-embeddings"')[1].split("</tr>")[0]
    assert "org override" in embeddings and "Use default" in embeddings
    tts = body.split('id="auto-tts"')[1].split("</tr>")[0]
    assert "none" in tts and "No tts models available" in tts


def test_a_default_the_org_cannot_use_is_flagged(people, login):
    body = login(people.alice).get(URL).content.decode()
    completions = body.split('id="auto-completions"')[1].split("</tr>")[0]
    assert "cluster:chat-a" in completions and "not available" in completions


def test_set_returns_the_row(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    response = login(people.alice).post(
        URL + "/completions", {"action": "set", "model_id": "acme:chat-1"}, headers=HTMX
    )
    body = response.content.decode()
    assert "<html" not in body
    assert body.lstrip().startswith('<tr id="auto-completions"')
    assert "org override" in body
    auto = AutoModel.objects.get(org=people.org_a, endpoint="completions")
    assert auto.model_id == "acme:chat-1" and auto.set_by == "user:alice"


def test_errors_are_shown_in_the_row(people, login, granted):
    client = login(people.alice)
    body = client.post(
        URL + "/tts", {"action": "set", "model_id": "cluster:chat-a"}, headers=HTMX
    ).content.decode()
    assert response_ok(body)
    assert "has apiFormat" in body and 'class="error"' in body
    body = client.post(
        URL + "/completions", {"action": "set", "model_id": ""}, headers=HTMX
    ).content.decode()
    assert "modelId" in body
    body = client.post(
        URL + "/completions", {"action": "set", "model_id": "cluster:chat-b"}, headers=HTMX
    ).content.decode()
    assert "not available to this org" in body
    assert not AutoModel.objects.exists()


def response_ok(body: str) -> bool:
    return "<html" not in body and "<tr" in body


def test_clear_goes_back_to_the_default(people, login, granted):
    AutoModel.objects.create(
        org=people.org_a, endpoint="completions", model_id="cluster:chat-a", set_by="x"
    )
    body = (
        login(people.alice)
        .post(URL + "/completions", {"action": "clear"}, headers=HTMX)
        .content.decode()
    )
    assert "operator default" in body
    assert not AutoModel.objects.exists()


def test_without_javascript_it_redirects_with_a_message(people, login, granted):
    client = login(people.alice)
    response = client.post(URL + "/completions", {"action": "set", "model_id": "cluster:chat-a"})
    assert response.status_code == 302 and response["Location"] == URL
    assert "Auto model for completions set" in client.get(URL).content.decode()
    client.post(URL + "/tts", {"action": "set", "model_id": "cluster:chat-a"})
    assert "has apiFormat" in client.get(URL).content.decode()


def test_unknown_endpoint_is_404(people, login):
    response = login(people.alice).post(URL + "/chat", {"action": "clear"})
    assert response.status_code == 404


def test_members_see_defaults_without_controls(people, login, granted):
    body = login(people.bob).get(URL).content.decode()
    assert "<select" not in body.split('id="auto-table"')[1]
    assert "Only org admins can change these" in body
