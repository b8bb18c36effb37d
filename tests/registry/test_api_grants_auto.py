"""Cluster registry, org grants and auto-model overrides, ops 9–14 (api-contract.md §6), driven by
meetkai-mka1 against the live server."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from registry.models import AutoModel, ClusterGrant
from registry.services import put_grants
from tests.conftest import auth
from tests.registry.apicheck import assert_sdk_error as assert_error
from tests.registry.apicheck import sdk_error

ALL_CLUSTER = [
    "cluster:chat-a",
    "cluster:chat-b",
    "cluster:embed",
    "cluster:hidden-chat",
    "cluster:tts",
]
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def granted(org: Any) -> list[str]:
    return sorted(ClusterGrant.objects.filter(org=org).values_list("model_id", flat=True))


# --- op 9: cluster registry ------------------------------------------------------------------


def test_it_lists_every_yaml_model_including_hidden(world, make_model, sdk_for):
    make_model(world.org_a, "acme:chat-1")
    listed = sdk_for(world.carol).llm.models.list_cluster_registry()
    assert sorted(m.id for m in listed.data) == ALL_CLUSTER
    by_id = {m.id: m for m in listed.data}
    assert (by_id["cluster:chat-b"].provider, by_id["cluster:chat-b"].api_format) == (
        "groq",
        "completions",
    )
    assert (by_id["cluster:tts"].provider, by_id["cluster:tts"].api_format) == ("openai", "tts")
    assert by_id["cluster:embed"].api_format == "embeddings"


def test_it_always_sends_hidden_and_error_fallback_model_id(world, http):
    response = http.get("/api/v1/llm/models/cluster_registry", headers=auth(world.carol))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    by_id = {item["id"]: item for item in body["data"]}
    assert sorted(by_id) == ALL_CLUSTER
    for item in body["data"]:
        assert set(item) >= {"id", "provider", "api_format", "hidden", "error_fallback_model_id"}
    assert by_id["cluster:chat-b"]["error_fallback_model_id"] == "cluster:chat-a"
    assert by_id["cluster:chat-a"]["error_fallback_model_id"] is None
    assert by_id["cluster:hidden-chat"]["hidden"] is True
    assert [i for i, item in by_id.items() if item["hidden"] is not False] == [
        "cluster:hidden-chat"
    ]
    assert "sk-canary-cluster-secret" not in response.text


def test_cluster_ops_need_a_cluster_admin_key(world, sdk_for):
    for who in (world.alice, world.bob, world.dave):
        models = sdk_for(who).llm.models
        assert_error(sdk_error(models.list_cluster_registry), 403, "permission_error")
        exc = sdk_error(models.list_cluster_registry_org_grants, org_id="org-acme")
        assert_error(exc, 403, "permission_error")
        exc = sdk_error(
            models.put_cluster_registry_org_grants, org_id="org-acme", model_ids=["cluster:tts"]
        )
        assert_error(exc, 403, "permission_error")
    assert granted(world.org_a) == []


# --- ops 10–11: grants -----------------------------------------------------------------------


def test_put_grants_is_a_full_replacement(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    first = models.put_cluster_registry_org_grants(
        org_id="org-acme", model_ids=["cluster:chat-b", "cluster:chat-a"]
    )
    assert first.org_id == "org-acme"
    assert first.granted_model_ids == ["cluster:chat-a", "cluster:chat-b"]
    second = models.put_cluster_registry_org_grants(
        org_id="org-acme", model_ids=["cluster:tts", "cluster:chat-b"]
    )
    assert second.granted_model_ids == ["cluster:chat-b", "cluster:tts"]
    listed = models.list_cluster_registry_org_grants(org_id="org-acme")
    assert [g.model_id for g in listed.data] == ["cluster:chat-b", "cluster:tts"]
    assert granted(world.org_a) == ["cluster:chat-b", "cluster:tts"]


def test_put_grants_is_idempotent(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    ids = ["cluster:chat-a", "cluster:embed"]
    first = models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=ids)
    before = models.list_cluster_registry_org_grants(org_id="org-acme")
    again = models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=ids)
    after = models.list_cluster_registry_org_grants(org_id="org-acme")
    assert again.granted_model_ids == first.granted_model_ids == ids
    assert [(g.model_id, g.granted_at) for g in after.data] == [
        (g.model_id, g.granted_at) for g in before.data
    ]


def test_put_grants_with_an_empty_list_revokes_all(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a", "cluster:tts"], actor="test")
    models = sdk_for(world.carol).llm.models
    result = models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=[])
    assert (result.org_id, result.granted_model_ids) == ("org-acme", [])
    assert models.list_cluster_registry_org_grants(org_id="org-acme").data == []
    assert sdk_for(world.alice).llm.models.list().data == []


def test_put_grants_collapses_duplicates_and_sorts(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    result = models.put_cluster_registry_org_grants(
        org_id="org-acme",
        model_ids=["cluster:tts", "cluster:chat-a", "cluster:tts", "cluster:chat-a"],
    )
    assert result.granted_model_ids == ["cluster:chat-a", "cluster:tts"]
    listed = models.list_cluster_registry_org_grants(org_id="org-acme")
    assert [g.model_id for g in listed.data] == ["cluster:chat-a", "cluster:tts"]


def test_put_grants_sends_the_wire_shape(world, http):
    response = http.put(
        "/api/v1/llm/models/cluster_registry/orgs/org-acme/grants",
        json={"modelIds": ["cluster:tts", "cluster:chat-a"]},
        headers=auth(world.carol),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "org_id": "org-acme",
        "granted_model_ids": ["cluster:chat-a", "cluster:tts"],
    }


def test_put_grants_refuses_unknown_ids_and_changes_nothing(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    models = sdk_for(world.carol).llm.models
    exc = sdk_error(
        models.put_cluster_registry_org_grants,
        org_id="org-acme",
        model_ids=["cluster:chat-b", "cluster:nope", "acme:not-yaml"],
    )
    error = assert_error(exc, 400, "invalid_request_error")
    assert "cluster:nope" in error["message"]
    assert "acme:not-yaml" in error["message"]
    assert granted(world.org_a) == ["cluster:chat-a"]


def test_put_grants_refuses_an_org_models_id(world, make_model, sdk_for):
    make_model(world.org_a, "acme:chat-1")
    models = sdk_for(world.carol).llm.models
    exc = sdk_error(
        models.put_cluster_registry_org_grants, org_id="org-acme", model_ids=["acme:chat-1"]
    )
    assert "acme:chat-1" in assert_error(exc, 400, "invalid_request_error")["message"]
    assert granted(world.org_a) == []


def test_grants_of_an_unknown_org_are_404(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    exc = sdk_error(models.list_cluster_registry_org_grants, org_id="org-nope")
    assert_error(exc, 404, "not_found_error")
    exc = sdk_error(
        models.put_cluster_registry_org_grants, org_id="org-nope", model_ids=["cluster:chat-a"]
    )
    assert_error(exc, 404, "not_found_error")
    assert not ClusterGrant.objects.exists()


def test_grants_are_listed_with_iso_z_timestamps(world, sdk_for, http):
    sdk_for(world.carol).llm.models.put_cluster_registry_org_grants(
        org_id="org-acme", model_ids=["cluster:chat-a", "cluster:embed"]
    )
    response = http.get(
        "/api/v1/llm/models/cluster_registry/orgs/org-acme/grants", headers=auth(world.carol)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [item["model_id"] for item in body["data"]] == ["cluster:chat-a", "cluster:embed"]
    for item in body["data"]:
        assert set(item) >= {"org_id", "model_id", "granted_by", "granted_at"}
        assert item["org_id"] == "org-acme"
        assert isinstance(item["granted_by"], str) and item["granted_by"]
        assert ISO_Z.match(item["granted_at"]), item["granted_at"]
    typed = sdk_for(world.carol).llm.models.list_cluster_registry_org_grants(org_id="org-acme")
    assert all(isinstance(g.granted_at, datetime) for g in typed.data)
    assert all(g.granted_at.utcoffset().total_seconds() == 0 for g in typed.data)


def test_grants_of_another_org_are_listed_and_used_by_that_org(world, sdk_for):
    carol = sdk_for(world.carol).llm.models
    result = carol.put_cluster_registry_org_grants(
        org_id="org-globex", model_ids=["cluster:chat-a"]
    )
    assert (result.org_id, result.granted_model_ids) == ("org-globex", ["cluster:chat-a"])
    listed = carol.list_cluster_registry_org_grants(org_id="org-globex")
    assert [(g.org_id, g.model_id) for g in listed.data] == [("org-globex", "cluster:chat-a")]
    assert carol.list_cluster_registry_org_grants(org_id="org-acme").data == []
    assert [m.id for m in sdk_for(world.dave).llm.models.list().data] == ["cluster:chat-a"]
    assert sdk_for(world.alice).llm.models.list().data == []


def test_an_empty_grant_list_is_empty_data(world, sdk_for):
    listed = sdk_for(world.carol).llm.models.list_cluster_registry_org_grants(org_id="org-globex")
    assert listed.data == []


def test_granted_by_records_x_on_behalf_of(world, sdk_for):
    models = sdk_for(world.carol).llm.models
    models.put_cluster_registry_org_grants(
        org_id="org-acme",
        model_ids=["cluster:chat-a"],
        http_headers={"X-On-Behalf-Of": "ops-person-7"},
    )
    (grant,) = models.list_cluster_registry_org_grants(org_id="org-acme").data
    assert "ops-person-7" in grant.granted_by


# --- ops 12–14: auto models ------------------------------------------------------------------


def test_put_auto_model_sets_an_override(world, sdk_for, http):
    put_grants(world.org_a, ["cluster:tts"], actor="test")
    models = sdk_for(world.alice).llm.models
    auto = models.put_org_auto_model(endpoint="tts", model_id="cluster:tts")
    assert (auto.endpoint, auto.model_id) == ("tts", "cluster:tts")
    assert isinstance(auto.set_by, str) and auto.set_by
    assert isinstance(auto.set_at, datetime)
    listed = http.get("/api/v1/llm/models/auto", headers=auth(world.alice))
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list"
    (item,) = body["data"]
    assert set(item) >= {"endpoint", "model_id", "set_by", "set_at"}
    assert (item["endpoint"], item["model_id"]) == ("tts", "cluster:tts")
    assert ISO_Z.match(item["set_at"]), item["set_at"]


def test_put_auto_model_is_an_upsert(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    make_model(world.org_a, "acme:chat-1")
    models = sdk_for(world.alice).llm.models
    models.put_org_auto_model(endpoint="completions", model_id="cluster:chat-a")
    models.put_org_auto_model(endpoint="completions", model_id="acme:chat-1")
    listed = models.list_org_auto_models()
    assert [(a.endpoint, a.model_id) for a in listed.data] == [("completions", "acme:chat-1")]
    assert AutoModel.objects.filter(org=world.org_a).count() == 1


def test_list_auto_models_shows_only_overridden_endpoints_of_the_org(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a", "cluster:embed", "cluster:tts"], actor="test")
    put_grants(world.org_b, ["cluster:tts"], actor="test")
    models = sdk_for(world.alice).llm.models
    assert models.list_org_auto_models().data == []
    models.put_org_auto_model(endpoint="tts", model_id="cluster:tts")
    models.put_org_auto_model(endpoint="embeddings", model_id="cluster:embed")
    listed = {a.endpoint: a.model_id for a in models.list_org_auto_models().data}
    assert listed == {"tts": "cluster:tts", "embeddings": "cluster:embed"}
    assert sdk_for(world.dave).llm.models.list_org_auto_models().data == []


def test_delete_auto_model_clears_and_is_idempotent(world, sdk_for, http):
    put_grants(world.org_a, ["cluster:tts"], actor="test")
    models = sdk_for(world.alice).llm.models
    models.put_org_auto_model(endpoint="tts", model_id="cluster:tts")
    cleared = models.delete_org_auto_model(endpoint="tts")
    assert (cleared.endpoint, cleared.cleared) == ("tts", True)
    assert models.list_org_auto_models().data == []
    again = models.delete_org_auto_model(endpoint="tts")
    assert (again.endpoint, again.cleared) == ("tts", True)
    raw = http.delete("/api/v1/llm/models/auto/images", headers=auth(world.alice))
    assert raw.status_code == 200
    assert raw.json() == {"endpoint": "images", "cleared": True}


def test_deleting_one_org_override_leaves_the_other_org_alone(world, sdk_for):
    put_grants(world.org_a, ["cluster:tts"], actor="test")
    put_grants(world.org_b, ["cluster:tts"], actor="test")
    sdk_for(world.dave).llm.models.put_org_auto_model(endpoint="tts", model_id="cluster:tts")
    sdk_for(world.alice).llm.models.delete_org_auto_model(endpoint="tts")
    listed = sdk_for(world.dave).llm.models.list_org_auto_models().data
    assert [(a.endpoint, a.model_id) for a in listed] == [("tts", "cluster:tts")]


@pytest.mark.parametrize("endpoint", ["chat", "completion", "TTS", "auto"])
def test_an_unknown_auto_endpoint_is_404(world, sdk_for, endpoint):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    models = sdk_for(world.alice).llm.models
    exc = sdk_error(models.put_org_auto_model, endpoint=endpoint, model_id="cluster:chat-a")
    assert_error(exc, 404, "not_found_error")
    assert_error(sdk_error(models.delete_org_auto_model, endpoint=endpoint), 404, "not_found_error")
    assert not AutoModel.objects.exists()


def test_auto_cannot_point_at_auto(world, sdk_for):
    models = sdk_for(world.alice).llm.models
    exc = sdk_error(models.put_org_auto_model, endpoint="completions", model_id="auto")
    assert_error(exc, 400, "invalid_request_error")
    assert not AutoModel.objects.exists()


def test_auto_refuses_an_ungranted_cluster_model(world, sdk_for):
    models = sdk_for(world.alice).llm.models
    exc = sdk_error(models.put_org_auto_model, endpoint="tts", model_id="cluster:tts")
    error = assert_error(exc, 400, "invalid_request_error")
    assert "not available to this org" in error["message"]
    assert not AutoModel.objects.exists()


def test_auto_refuses_another_orgs_model(world, make_model, sdk_for):
    make_model(world.org_b, "globex:chat")
    models = sdk_for(world.alice).llm.models
    exc = sdk_error(models.put_org_auto_model, endpoint="completions", model_id="globex:chat")
    error = assert_error(exc, 400, "invalid_request_error")
    assert "not available to this org" in error["message"]
    assert not AutoModel.objects.exists()


def test_auto_refuses_an_api_format_mismatch(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    make_model(world.org_a, "acme:tts", apiFormat="tts")
    models = sdk_for(world.alice).llm.models
    exc = sdk_error(models.put_org_auto_model, endpoint="embeddings", model_id="cluster:chat-a")
    assert_error(exc, 400, "invalid_request_error")
    exc = sdk_error(models.put_org_auto_model, endpoint="completions", model_id="acme:tts")
    assert_error(exc, 400, "invalid_request_error")
    assert not AutoModel.objects.exists()


def test_auto_refuses_a_body_without_model_id(world, http):
    response = http.put("/api/v1/llm/models/auto/completions", json={}, headers=auth(world.alice))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


def test_auto_ops_need_an_admin_key(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    models = sdk_for(world.bob).llm.models
    assert_error(sdk_error(models.list_org_auto_models), 403, "permission_error")
    exc = sdk_error(models.put_org_auto_model, endpoint="completions", model_id="cluster:chat-a")
    assert_error(exc, 403, "permission_error")
    exc = sdk_error(models.delete_org_auto_model, endpoint="completions")
    assert_error(exc, 403, "permission_error")
    assert not AutoModel.objects.exists()


def test_set_by_records_x_on_behalf_of(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    auto = sdk_for(world.alice).llm.models.put_org_auto_model(
        endpoint="completions",
        model_id="cluster:chat-a",
        http_headers={"X-On-Behalf-Of": "end-user-42"},
    )
    assert "end-user-42" in auto.set_by


def test_revoking_a_grant_removes_the_auto_override_pointing_to_it(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a", "cluster:embed"], actor="test")
    alice = sdk_for(world.alice).llm.models
    alice.put_org_auto_model(endpoint="completions", model_id="cluster:chat-a")
    alice.put_org_auto_model(endpoint="embeddings", model_id="cluster:embed")
    sdk_for(world.carol).llm.models.put_cluster_registry_org_grants(
        org_id="org-acme", model_ids=["cluster:embed"]
    )
    listed = alice.list_org_auto_models().data
    assert [(a.endpoint, a.model_id) for a in listed] == [("embeddings", "cluster:embed")]


def test_revoking_all_grants_removes_every_override_to_cluster_models(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a", "cluster:tts"], actor="test")
    make_model(world.org_a, "acme:embed", apiFormat="embeddings")
    alice = sdk_for(world.alice).llm.models
    alice.put_org_auto_model(endpoint="completions", model_id="cluster:chat-a")
    alice.put_org_auto_model(endpoint="tts", model_id="cluster:tts")
    alice.put_org_auto_model(endpoint="embeddings", model_id="acme:embed")
    sdk_for(world.carol).llm.models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=[])
    listed = alice.list_org_auto_models().data
    assert [(a.endpoint, a.model_id) for a in listed] == [("embeddings", "acme:embed")]


def test_an_override_set_through_an_alias_points_at_the_model(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    alice = sdk_for(world.alice).llm.models
    auto = alice.put_org_auto_model(endpoint="completions", model_id="chat-a")
    assert auto.model_id in {"chat-a", "cluster:chat-a"}
    sdk_for(world.carol).llm.models.put_cluster_registry_org_grants(org_id="org-acme", model_ids=[])
    assert alice.list_org_auto_models().data == []
