"""`llm.models.list` / `llm.models.get` (api-contract.md §3 ops 1–2, §4), through meetkai-mka1
and through the `openai` client, against the live server."""

from __future__ import annotations

import json

import openai
import pytest

from registry.services import put_grants
from tests.conftest import auth
from tests.registry.apicheck import assert_sdk_error as assert_error
from tests.registry.apicheck import sdk_error

GRANTED = ["cluster:chat-a", "cluster:chat-b", "cluster:hidden-chat", "cluster:tts"]


@pytest.fixture
def acme(world, make_model):
    """Org A with four granted cluster models and a few models of its own; org B with one."""
    put_grants(world.org_a, GRANTED, actor="test")
    make_model(world.org_a, "acme:chat-1")
    make_model(world.org_a, "acme:hidden", hidden=True)
    make_model(world.org_a, "zz:last", apiFormat="embeddings", created=1700000000)
    make_model(world.org_b, "globex:secret")
    return world


# --- list ------------------------------------------------------------------------------------


def test_it_lists_granted_cluster_models_and_own_models_sorted_without_hidden(acme, sdk_for):
    listed = sdk_for(acme.alice).llm.models.list()
    assert [m.id for m in listed.data] == [
        "acme:chat-1",
        "cluster:chat-a",
        "cluster:chat-b",
        "cluster:tts",
        "zz:last",
    ]


def test_it_lists_for_a_member_key_too(acme, sdk_for):
    listed = sdk_for(acme.bob).llm.models.list()
    assert "acme:chat-1" in [m.id for m in listed.data]


def test_it_sends_the_list_wire_shape(acme, http):
    response = http.get("/api/v1/llm/models", headers=auth(acme.alice))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "list"
    for item in body["data"]:
        assert set(item) >= {"id", "object", "created", "owned_by", "model_type"}
        assert item["object"] == "model"
        assert isinstance(item["created"], int)


def test_it_excludes_ungranted_cluster_models_and_other_orgs_models(acme, sdk_for):
    ids = [m.id for m in sdk_for(acme.alice).llm.models.list().data]
    assert "cluster:embed" not in ids
    assert "globex:secret" not in ids
    assert [m.id for m in sdk_for(acme.dave).llm.models.list().data] == ["globex:secret"]


def test_it_describes_each_model_per_section_4(acme, sdk_for):
    by_id = {m.id: m for m in sdk_for(acme.alice).llm.models.list().data}
    assert (by_id["cluster:chat-a"].owned_by, by_id["cluster:chat-a"].created) == (
        "openai",
        1704067200,
    )
    assert (by_id["cluster:chat-b"].owned_by, by_id["cluster:chat-b"].created) == (
        "groq",
        1704067300,
    )
    assert by_id["acme:chat-1"].owned_by == "org-acme"
    assert by_id["acme:chat-1"].created == 1704067200
    assert by_id["zz:last"].owned_by == "org-acme"
    assert by_id["zz:last"].created == 1700000000
    assert by_id["cluster:chat-a"].model_type == "llm"
    assert by_id["cluster:tts"].model_type == "text_to_speech"
    assert by_id["zz:last"].model_type == "embeddings"


@pytest.mark.parametrize(
    ("api_format", "model_type"),
    [
        ("responses", "llm"),
        ("completions", "llm"),
        ("embeddings", "embeddings"),
        ("images", "images"),
        ("transcriptions", "speech_to_text"),
        ("tts", "text_to_speech"),
    ],
)
def test_it_derives_model_type_from_api_format(world, make_model, sdk_for, api_format, model_type):
    make_model(world.org_a, f"acme:{api_format}", apiFormat=api_format)
    model = sdk_for(world.alice).llm.models.get(model_id=f"acme:{api_format}")
    assert model.model_type == model_type
    listed = sdk_for(world.alice).llm.models.list()
    assert [(m.id, m.model_type) for m in listed.data] == [(f"acme:{api_format}", model_type)]


def test_it_lists_an_org_owned_by_its_slug_for_org_b(acme, sdk_for):
    (model,) = sdk_for(acme.dave).llm.models.list().data
    assert model.owned_by == "org-globex"


# --- get -------------------------------------------------------------------------------------


def test_it_gets_a_cluster_model_and_an_org_model(acme, sdk_for):
    sdk = sdk_for(acme.alice)
    cluster = sdk.llm.models.get(model_id="cluster:chat-b")
    assert (cluster.id, cluster.owned_by, cluster.model_type, cluster.created) == (
        "cluster:chat-b",
        "groq",
        "llm",
        1704067300,
    )
    own = sdk.llm.models.get(model_id="acme:chat-1")
    assert (own.id, own.owned_by, own.model_type, own.created) == (
        "acme:chat-1",
        "org-acme",
        "llm",
        1704067200,
    )


def test_it_gets_hidden_models_that_the_list_leaves_out(acme, sdk_for):
    sdk = sdk_for(acme.alice)
    assert sdk.llm.models.get(model_id="cluster:hidden-chat").id == "cluster:hidden-chat"
    assert sdk.llm.models.get(model_id="acme:hidden").id == "acme:hidden"


def test_it_sends_the_get_wire_shape(acme, http):
    response = http.get("/api/v1/llm/models/cluster:chat-a", headers=auth(acme.alice))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "model"
    assert body["id"] == "cluster:chat-a"
    assert body["created"] == 1704067200 and isinstance(body["created"], int)


def test_it_resolves_a_cluster_alias_in_get(acme, sdk_for):
    model = sdk_for(acme.alice).llm.models.get(model_id="chat-a")
    assert model.id in {"chat-a", "cluster:chat-a"}
    assert (model.owned_by, model.created, model.model_type) == ("openai", 1704067200, "llm")


def test_it_resolves_an_org_alias_in_get(world, http, sdk_for):
    from tests.conftest import model_body

    body = model_body("acme:aliased", aliases=["acme-short"], created=1711111111)
    added = http.post("/api/v1/llm/models/registry", json=body, headers=auth(world.alice))
    assert added.status_code == 200, added.text
    model = sdk_for(world.alice).llm.models.get(model_id="acme-short")
    assert model.id in {"acme-short", "acme:aliased"}
    assert (model.owned_by, model.created) == ("org-acme", 1711111111)


def test_it_answers_404_for_an_ungranted_cluster_model(acme, sdk_for):
    sdk = sdk_for(acme.alice)
    assert_error(sdk_error(sdk.llm.models.get, model_id="cluster:embed"), 404, "not_found_error")


def test_it_answers_404_for_the_alias_of_an_ungranted_cluster_model(world, sdk_for):
    sdk = sdk_for(world.alice)
    assert_error(sdk_error(sdk.llm.models.get, model_id="chat-a"), 404, "not_found_error")


def test_it_answers_404_for_another_orgs_model(acme, sdk_for):
    sdk = sdk_for(acme.alice)
    error = assert_error(
        sdk_error(sdk.llm.models.get, model_id="globex:secret"), 404, "not_found_error"
    )
    assert "globex:secret" not in json.dumps({k: v for k, v in error.items() if k != "message"})
    # ...and the other way round.
    other = sdk_for(acme.dave)
    assert_error(sdk_error(other.llm.models.get, model_id="acme:chat-1"), 404, "not_found_error")


def test_it_answers_404_for_an_unknown_model(world, sdk_for):
    sdk = sdk_for(world.alice)
    assert_error(sdk_error(sdk.llm.models.get, model_id="nope:missing"), 404, "not_found_error")


def test_it_accepts_x_on_behalf_of_on_list_and_get(acme, sdk_for):
    sdk = sdk_for(acme.alice)
    listed = sdk.llm.models.list(x_on_behalf_of="end-user-42")
    assert "acme:chat-1" in [m.id for m in listed.data]
    assert sdk.llm.models.get(model_id="acme:chat-1", x_on_behalf_of="end-user-42").id == (
        "acme:chat-1"
    )


def test_it_refuses_a_missing_or_revoked_key(world, sdk_for):
    for who in (None, world.revoked):
        sdk = sdk_for(who)
        assert_error(sdk_error(sdk.llm.models.list), 401, "authentication_error")


# --- ids containing "/" ----------------------------------------------------------------------


def test_it_gets_an_id_with_a_slash_through_the_sdk(world, make_model, sdk_for):
    make_model(world.org_a, "acme/llama-3", created=1712345678)
    sdk = sdk_for(world.alice)
    model = sdk.llm.models.get(model_id="acme/llama-3")
    assert (model.id, model.created, model.owned_by) == ("acme/llama-3", 1712345678, "org-acme")
    assert [m.id for m in sdk.llm.models.list().data] == ["acme/llama-3"]


def test_it_gets_an_id_with_a_slash_sent_percent_encoded(world, make_model, http):
    make_model(world.org_a, "acme/llama-3")
    response = http.get("/api/v1/llm/models/acme%2Fllama-3", headers=auth(world.alice))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "acme/llama-3"


def test_it_gets_an_id_with_a_slash_through_openai(world, make_model, openai_for):
    make_model(world.org_a, "acme/llama-3", created=1712345678)
    client = openai_for(world.alice)
    model = client.models.retrieve("acme/llama-3")
    assert (model.id, model.created, model.owned_by) == ("acme/llama-3", 1712345678, "org-acme")
    assert [m.id for m in client.models.list()] == ["acme/llama-3"]


# --- the openai client -----------------------------------------------------------------------


def test_it_lists_models_through_openai(acme, openai_for):
    client = openai_for(acme.alice)
    page = client.models.list()
    assert [m.id for m in page] == [
        "acme:chat-1",
        "cluster:chat-a",
        "cluster:chat-b",
        "cluster:tts",
        "zz:last",
    ]
    by_id = {m.id: m for m in page}
    assert by_id["cluster:chat-b"].owned_by == "groq"
    assert by_id["cluster:chat-b"].object == "model"
    assert by_id["acme:chat-1"].owned_by == "org-acme"


def test_it_retrieves_models_through_openai(acme, openai_for):
    client = openai_for(acme.alice)
    model = client.models.retrieve("cluster:chat-a")
    assert (model.id, model.object, model.created, model.owned_by) == (
        "cluster:chat-a",
        "model",
        1704067200,
        "openai",
    )
    assert client.models.retrieve("cluster:hidden-chat").id == "cluster:hidden-chat"


def test_it_answers_openai_not_found_for_invisible_models(acme, openai_for):
    client = openai_for(acme.alice)
    for model_id in ("cluster:embed", "globex:secret", "nope:missing"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(model_id)
        assert info.value.status_code == 404
