"""The org model registry, ops 3–8 (api-contract.md §5), driven by meetkai-mka1 against the live
server; raw HTTP only for bodies the SDK cannot send. Health probes hit a real HTTP server on
127.0.0.1 started by a fixture."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from meetkai_mka1 import errors

from registry.models import RegistryModel
from registry.services import put_grants
from tests.conftest import SECRET, auth, model_body
from tests.registry.apicheck import assert_sdk_error as assert_error
from tests.registry.apicheck import sdk_error

MARKER = "********"
CLUSTER_SECRET = "sk-canary-cluster-secret"

SNAKE = {
    "modelId": "model_id",
    "apiFormat": "api_format",
    "apiProviderType": "api_provider_type",
    "displayName": "display_name",
    "baseUrl": "base_url",
    "contextWindow": "context_window",
    "rateLimits": "rate_limits",
    "defaultParams": "default_params",
    "rerouteRules": "reroute_rules",
    "embeddingLimits": "embedding_limits",
    "healthCheck": "health_check",
}


def kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """A camelCase wire body as the SDK's snake_case keyword arguments."""
    return {SNAKE.get(k, k): v for k, v in body.items()}


def add(sdk: Any, model_id: str = "acme:chat-1", **overrides: Any) -> Any:
    return sdk.llm.models.add_registry_model(**kwargs(model_body(model_id, **overrides)))


def now_ms() -> int:
    return int(time.time() * 1000)


def db_model(model_id: str) -> RegistryModel:
    return RegistryModel.objects.get(registry_id=model_id)


# --- add -------------------------------------------------------------------------------------

FULL_AUTH = {
    "type": "composite",
    "strategies": [
        {"type": "api-key", "value": SECRET, "headerName": "X-Key"},
        {"type": "custom-headers", "headers": {"X-A": SECRET}, "envVars": {"X-B": "ENV_B"}},
        {
            "type": "composite",
            "strategies": [
                {"type": "api-key", "envVar": "PROVIDER_KEY"},
                {"type": "custom-headers", "headers": {"X-C": SECRET, "X-D": "other-secret"}},
            ],
        },
        {"type": "none"},
    ],
}
REDACTED_AUTH = {
    "type": "composite",
    "strategies": [
        {"type": "api-key", "value": MARKER, "headerName": "X-Key"},
        {"type": "custom-headers", "headers": {"X-A": MARKER}, "envVars": {"X-B": "ENV_B"}},
        {
            "type": "composite",
            "strategies": [
                {"type": "api-key", "envVar": "PROVIDER_KEY"},
                {"type": "custom-headers", "headers": {"X-C": MARKER, "X-D": MARKER}},
            ],
        },
        {"type": "none"},
    ],
}
FULL_CAPABILITIES = {
    "modalities": {"input": ["text", "image"], "output": ["text"]},
    "reasoning": True,
    "supportedBase64Formats": ["image/png", "image/jpeg"],
    "supportsCompletionVideoUrlMessage": False,
    "supportsTemperature": True,
    "supportsTopP": False,
    "maxImageResolution": {"maxWidth": 2048, "maxHeight": 1024},
    "minImageResolution": {"maxWidth": 16, "maxHeight": 8},
}
FULL_OPTIONALS = {
    "displayName": "Full Model",
    "baseUrl": "https://models.example.com/v1",
    "contextWindow": 131072,
    "rpm": 120,
    "rateLimits": [
        {"scope": "org", "rpm": 10, "duration": 60, "queue": {"maxDepth": 3, "maxWaitMs": 100}},
        {"scope": "apiKey", "rpm": 5},
    ],
    "defaultParams": {
        "temperature": 0.2,
        "topP": 0.95,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    },
    "rerouteRules": [
        {
            "trigger": {"type": "input-modality", "modality": "audio"},
            "targetModelId": "cluster:chat-a",
            "preserveParams": True,
            "log": False,
        },
        {"trigger": {"type": "error-fallback"}, "targetModelId": "cluster:chat-a"},
    ],
    "hidden": True,
    "embeddingLimits": {"maxBatchSize": 8, "dimensions": {"min": 64, "max": 1024, "default": 256}},
    "healthCheck": {
        "mode": "periodic",
        "intervalSeconds": 30,
        "path": "/health",
        "method": "HEAD",
        "timeoutMs": 1500,
        "cacheTtlSeconds": 5,
    },
}


def full_body(model_id: str = "acme:full") -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "openai-compatible",
        "modelId": "full-1",
        "apiFormat": "responses",
        "apiProviderType": "groq",
        "created": 1704067200,
        "auth": FULL_AUTH,
        "capabilities": FULL_CAPABILITIES,
        **FULL_OPTIONALS,
    }


def test_it_adds_a_model_with_every_optional_field_round_tripping(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    sdk = sdk_for(world.alice)
    before = now_ms()
    added = sdk.llm.models.add_registry_model(**kwargs(full_body()))
    after = now_ms()

    assert (added.id, added.provider, added.model_id) == (
        "acme:full",
        "openai-compatible",
        "full-1",
    )
    assert (added.source, added.immutable) == ("database", False)
    expected = {**full_body(), "auth": REDACTED_AUTH, "source": "database", "immutable": False}
    assert added.definition == expected
    assert (added.health.is_available, added.health.last_health_check, added.health.error) == (
        True,
        None,
        None,
    )
    assert before - 1000 <= added.created_at <= after + 1000
    assert before - 1000 <= added.updated_at <= after + 1000

    got = sdk.llm.models.get_registry_model(id="acme:full")
    assert got.definition == expected


def test_it_sends_the_add_wire_shape(world, http):
    response = http.post(
        "/api/v1/llm/models/registry", json=model_body("acme:wire"), headers=auth(world.alice)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {
        "id",
        "provider",
        "model_id",
        "source",
        "immutable",
        "definition",
        "health",
        "created_at",
        "updated_at",
    }
    assert body["health"] == {"is_available": True, "last_health_check": None, "error": None}
    # Unix milliseconds as JSON numbers.
    assert isinstance(body["created_at"], int) and body["created_at"] > 10**12
    assert isinstance(body["updated_at"], int) and body["updated_at"] > 10**12
    definition = body["definition"]
    assert definition["source"] == "database" and definition["immutable"] is False
    assert definition["auth"] == {"type": "api-key", "value": MARKER}
    assert definition["modelId"] == "chat-1" and definition["apiFormat"] == "completions"
    assert definition["contextWindow"] == 8192 and definition["baseUrl"].startswith("https://")
    assert SECRET not in response.text


def test_it_stores_and_echoes_seed_only_fields(world, http):
    body = model_body("acme:seed", publicName="Acme Seed", aliases=["acme-seed", "seed:two"])
    response = http.post("/api/v1/llm/models/registry", json=body, headers=auth(world.alice))
    assert response.status_code == 200, response.text
    definition = response.json()["definition"]
    assert definition["publicName"] == "Acme Seed"
    assert definition["aliases"] == ["acme-seed", "seed:two"]


def test_it_echoes_a_legacy_health_check_as_stored(world, http):
    legacy = {"url": "https://status.example.com/ping", "method": "GET"}
    response = http.post(
        "/api/v1/llm/models/registry",
        json=model_body("acme:legacy", healthCheck=legacy),
        headers=auth(world.alice),
    )
    assert response.status_code == 200, response.text
    assert response.json()["definition"]["healthCheck"] == legacy


def test_it_echoes_env_var_names_and_redacts_custom_headers(world, sdk_for):
    sdk = sdk_for(world.alice)
    env = add(sdk, "acme:env", auth={"type": "api-key", "envVar": "ACME_KEY", "headerName": "X-K"})
    assert env.definition["auth"] == {"type": "api-key", "envVar": "ACME_KEY", "headerName": "X-K"}
    headers = add(
        sdk,
        "acme:headers",
        auth={
            "type": "custom-headers",
            "headers": {"X-Api-Key": SECRET, "X-Org": "acme-org-secret"},
            "envVars": {"X-Extra": "EXTRA_HEADER"},
        },
    )
    assert headers.definition["auth"] == {
        "type": "custom-headers",
        "headers": {"X-Api-Key": MARKER, "X-Org": MARKER},
        "envVars": {"X-Extra": "EXTRA_HEADER"},
    }
    none = add(sdk, "acme:none", auth={"type": "none"})
    assert none.definition["auth"] == {"type": "none"}


def test_it_never_returns_secrets_in_any_registry_response(world, sdk_for, http):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    add(sdk_for(world.alice), "acme:chat-1")
    for path in (
        "/api/v1/llm/models/registry",
        "/api/v1/llm/models/registry/acme:chat-1",
        "/api/v1/llm/models/registry/cluster:chat-a",
    ):
        response = http.get(path, headers=auth(world.alice))
        assert response.status_code == 200, response.text
        assert SECRET not in response.text
        assert CLUSTER_SECRET not in response.text


def test_it_encrypts_the_secret_at_rest(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    add(sdk, "acme:composite", auth=FULL_AUTH)
    for model_id in ("acme:chat-1", "acme:composite"):
        row = db_model(model_id)
        assert SECRET not in row.auth_ciphertext
        assert SECRET not in json.dumps(row.definition)
    assert db_model("acme:chat-1").get_auth() == {"type": "api-key", "value": SECRET}
    assert db_model("acme:composite").get_auth() == FULL_AUTH


def test_it_refuses_a_duplicate_id_with_409(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    error = assert_error(sdk_error(add, sdk, "acme:chat-1"), 409, "conflict_error")
    assert "acme:chat-1" in error["message"]
    assert RegistryModel.objects.filter(registry_id="acme:chat-1").count() == 1


def test_it_lets_two_orgs_use_the_same_id(world, sdk_for):
    add(sdk_for(world.alice), "shared:chat")
    assert add(sdk_for(world.dave), "shared:chat").id == "shared:chat"


@pytest.mark.parametrize("model_id", ["cluster:chat-a", "chat-a", "cluster:hidden-chat"])
def test_it_refuses_a_yaml_id_or_alias_with_409(world, sdk_for, model_id):
    sdk = sdk_for(world.alice)
    assert_error(sdk_error(add, sdk, model_id), 409, "conflict_error")
    assert not RegistryModel.objects.exists()


def test_it_refuses_a_yaml_name_as_an_alias_with_409(world, http):
    response = http.post(
        "/api/v1/llm/models/registry",
        json=model_body("acme:mine", aliases=["chat-a"]),
        headers=auth(world.alice),
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["type"] == "conflict_error"
    assert response.json()["error"]["code"] == 409


@pytest.mark.parametrize(
    "bad_auth",
    [
        {"type": "api-key", "value": MARKER},
        {"type": "custom-headers", "headers": {"X-Api-Key": MARKER}},
        {"type": "composite", "strategies": [{"type": "api-key", "value": MARKER}]},
    ],
)
def test_it_refuses_the_redaction_marker_as_a_secret(world, sdk_for, bad_auth):
    sdk = sdk_for(world.alice)
    assert_error(sdk_error(add, sdk, "acme:marker", auth=bad_auth), 400, "invalid_request_error")
    assert not RegistryModel.objects.exists()


def test_it_refuses_the_redaction_marker_on_update(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    exc = sdk_error(
        sdk.llm.models.update_registry_model,
        id="acme:chat-1",
        auth={"type": "api-key", "value": MARKER},
    )
    assert_error(exc, 400, "invalid_request_error")
    assert db_model("acme:chat-1").get_auth() == {"type": "api-key", "value": SECRET}


@pytest.mark.parametrize("model_id", ["auto", "registry", "cluster_registry", "has space"])
def test_it_refuses_reserved_or_malformed_ids_with_400(world, sdk_for, model_id):
    exc = sdk_error(add, sdk_for(world.alice), model_id)
    error = assert_error(exc, 400, "invalid_request_error")
    assert error["param"] == "id"
    assert not RegistryModel.objects.exists()


def test_it_accepts_an_add_without_api_provider_type(world, http):
    body = model_body("acme:seed-001")
    del body["apiProviderType"]
    response = http.post("/api/v1/llm/models/registry", json=body, headers=auth(world.alice))
    assert response.status_code == 200, response.text
    assert "apiProviderType" not in response.json()["definition"]


def test_it_treats_explicit_nulls_on_add_as_omitted(world, http):
    body = model_body("acme:nulls", displayName=None, rpm=None, healthCheck=None, hidden=None)
    response = http.post("/api/v1/llm/models/registry", json=body, headers=auth(world.alice))
    assert response.status_code == 200, response.text
    definition = response.json()["definition"]
    for key in ("displayName", "rpm", "healthCheck", "hidden"):
        assert key not in definition, key


@pytest.mark.parametrize("missing", ["provider", "modelId", "apiFormat", "created", "auth"])
def test_it_refuses_an_add_missing_a_required_field(world, http, missing):
    body = model_body("acme:missing")
    del body[missing]
    response = http.post("/api/v1/llm/models/registry", json=body, headers=auth(world.alice))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", 400)
    assert missing in error["message"]
    assert not RegistryModel.objects.exists()


def test_registry_ops_need_an_admin_key(world, make_model, sdk_for):
    make_model(world.org_a, "acme:chat-1")
    sdk = sdk_for(world.bob)
    models = sdk.llm.models
    calls = [
        (models.list_registry_models, {}),
        (models.get_registry_model, {"id": "acme:chat-1"}),
        (models.update_registry_model, {"id": "acme:chat-1", "display_name": "x"}),
        (models.remove_registry_model, {"id": "acme:chat-1"}),
        (models.check_registry_model_health, {"id": "acme:chat-1"}),
        (models.add_registry_model, kwargs(model_body("acme:other"))),
    ]
    for call, kw in calls:
        assert_error(sdk_error(call, **kw), 403, "permission_error")
    assert list(RegistryModel.objects.values_list("registry_id", flat=True)) == ["acme:chat-1"]


# --- list / get ------------------------------------------------------------------------------


def test_it_lists_org_models_and_granted_yaml_models_sorted(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-b", "cluster:hidden-chat"], actor="test")
    make_model(world.org_a, "zz:last")
    make_model(world.org_a, "acme:chat-1", hidden=True)
    make_model(world.org_b, "globex:secret")
    listed = sdk_for(world.alice).llm.models.list_registry_models()
    assert [m.id for m in listed.data] == [
        "acme:chat-1",
        "cluster:chat-b",
        "cluster:hidden-chat",
        "zz:last",
    ]
    by_id = {m.id: m for m in listed.data}
    yaml_model = by_id["cluster:chat-b"]
    assert (yaml_model.source, yaml_model.immutable) == ("yaml", True)
    assert yaml_model.created_at is None
    assert yaml_model.provider == "groq" and yaml_model.model_id == "llama-test-b"
    assert yaml_model.definition["source"] == "yaml"
    assert yaml_model.definition["immutable"] is True
    assert yaml_model.definition["auth"] == {"type": "api-key", "envVar": "GROQ_API_KEY"}
    own = by_id["zz:last"]
    assert (own.source, own.immutable) == ("database", False)
    assert own.created_at is not None and own.created_at > 10**12


def test_it_sends_the_registry_list_wire_shape(world, make_model, http):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    make_model(world.org_a, "acme:chat-1")
    response = http.get("/api/v1/llm/models/registry", headers=auth(world.alice))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    yaml_item = next(i for i in body["data"] if i["id"] == "cluster:chat-a")
    assert "created_at" in yaml_item and yaml_item["created_at"] is None
    assert "updated_at" in yaml_item
    assert yaml_item["health"] == {"is_available": True, "last_health_check": None, "error": None}
    assert yaml_item["definition"]["auth"] == {"type": "api-key", "value": MARKER}


def test_it_lists_an_empty_registry(world, sdk_for):
    assert sdk_for(world.alice).llm.models.list_registry_models().data == []


def test_it_gets_a_registry_model(world, make_model, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    make_model(world.org_a, "acme:chat-1", displayName="Chat One")
    sdk = sdk_for(world.alice)
    own = sdk.llm.models.get_registry_model(id="acme:chat-1")
    assert (own.id, own.source, own.model_id) == ("acme:chat-1", "database", "chat-1")
    assert own.definition["displayName"] == "Chat One"
    yaml_model = sdk.llm.models.get_registry_model(id="cluster:chat-a")
    assert (yaml_model.id, yaml_model.source, yaml_model.immutable) == (
        "cluster:chat-a",
        "yaml",
        True,
    )


def test_it_gets_a_registry_model_whose_id_has_a_slash(world, sdk_for, http):
    sdk = sdk_for(world.alice)
    add(sdk, "acme/llama-3")
    assert sdk.llm.models.get_registry_model(id="acme/llama-3").id == "acme/llama-3"
    encoded = http.get("/api/v1/llm/models/registry/acme%2Fllama-3", headers=auth(world.alice))
    assert encoded.status_code == 200 and encoded.json()["id"] == "acme/llama-3"
    updated = sdk.llm.models.update_registry_model(id="acme/llama-3", display_name="Llama")
    assert updated.definition["displayName"] == "Llama"
    assert sdk.llm.models.remove_registry_model(id="acme/llama-3").deleted is True


@pytest.mark.parametrize("model_id", ["nope:missing", "cluster:embed", "globex:secret"])
def test_it_answers_404_for_a_registry_model_the_org_cannot_see(
    world, make_model, sdk_for, model_id
):
    make_model(world.org_b, "globex:secret")
    sdk = sdk_for(world.alice)
    exc = sdk_error(sdk.llm.models.get_registry_model, id=model_id)
    assert_error(exc, 404, "not_found_error")


# --- update ----------------------------------------------------------------------------------


def test_it_keeps_absent_fields_on_update(world, sdk_for):
    sdk = sdk_for(world.alice)
    added = add(sdk, "acme:chat-1", displayName="Old", hidden=False)
    updated = sdk.llm.models.update_registry_model(id="acme:chat-1", display_name="New")
    assert updated.definition == {**added.definition, "displayName": "New"}
    assert updated.created_at == added.created_at


def test_it_clears_fields_sent_as_null(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    sdk = sdk_for(world.alice)
    add(sdk, "acme:full", **{k: v for k, v in full_body().items() if k != "id"})
    updated = sdk.llm.models.update_registry_model(
        id="acme:full",
        display_name=None,
        base_url=None,
        context_window=None,
        rpm=None,
        rate_limits=None,
        default_params=None,
        reroute_rules=None,
        hidden=None,
        embedding_limits=None,
        health_check=None,
    )
    cleared = [
        "displayName",
        "baseUrl",
        "contextWindow",
        "rpm",
        "rateLimits",
        "defaultParams",
        "rerouteRules",
        "hidden",
        "embeddingLimits",
        "healthCheck",
    ]
    for key in cleared:
        assert key not in updated.definition, key
    assert updated.definition["provider"] == "openai-compatible"
    assert updated.definition["capabilities"] == FULL_CAPABILITIES
    stored = db_model("acme:full")
    assert (stored.display_name, stored.base_url, stored.rpm, stored.hidden) == (
        "",
        "",
        None,
        False,
    )
    got = sdk.llm.models.get_registry_model(id="acme:full")
    assert got.definition == updated.definition


def test_it_clears_a_field_sent_as_null_over_raw_http(world, make_model, http):
    make_model(world.org_a, "acme:chat-1", displayName="Shown")
    response = http.patch(
        "/api/v1/llm/models/registry/acme:chat-1",
        json={"displayName": None, "rpm": None},
        headers=auth(world.alice),
    )
    assert response.status_code == 200, response.text
    definition = response.json()["definition"]
    assert "displayName" not in definition and "rpm" not in definition
    assert definition["contextWindow"] == 8192


@pytest.mark.parametrize(
    "field_name",
    ["provider", "modelId", "apiFormat", "apiProviderType", "created", "auth", "capabilities"],
)
def test_it_refuses_null_for_a_required_field(world, make_model, http, field_name):
    make_model(world.org_a, "acme:chat-1")
    before = db_model("acme:chat-1")
    response = http.patch(
        "/api/v1/llm/models/registry/acme:chat-1",
        json={field_name: None},
        headers=auth(world.alice),
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", 400)
    assert field_name in error["message"]
    after = db_model("acme:chat-1")
    assert after.definition == before.definition
    assert after.updated_at == before.updated_at


def test_an_empty_update_is_a_no_op_that_returns_the_model(world, sdk_for):
    sdk = sdk_for(world.alice)
    added = add(sdk, "acme:chat-1", displayName="Keep")
    same = sdk.llm.models.update_registry_model(id="acme:chat-1")
    assert same.id == "acme:chat-1"
    assert same.definition == added.definition
    assert same.created_at == added.created_at


def test_it_replaces_object_fields_whole(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(
        sdk,
        "acme:chat-1",
        capabilities=FULL_CAPABILITIES,
        defaultParams={"temperature": 0.2, "topP": 0.9},
        healthCheck={
            "mode": "periodic",
            "intervalSeconds": 60,
            "path": "/health",
            "method": "HEAD",
        },
    )
    updated = sdk.llm.models.update_registry_model(
        id="acme:chat-1",
        capabilities={"modalities": {"input": ["text"], "output": ["text"]}, "reasoning": False},
        default_params={"temperature": 1.0},
        health_check={"mode": "preflight", "path": "/ready"},
    )
    assert updated.definition["capabilities"] == {
        "modalities": {"input": ["text"], "output": ["text"]},
        "reasoning": False,
    }
    assert updated.definition["defaultParams"] == {"temperature": 1.0}
    assert updated.definition["healthCheck"] == {"mode": "preflight", "path": "/ready"}


def test_it_bumps_updated_at_on_update(world, sdk_for):
    sdk = sdk_for(world.alice)
    added = add(sdk, "acme:chat-1")
    time.sleep(0.02)
    updated = sdk.llm.models.update_registry_model(id="acme:chat-1", rpm=30)
    assert updated.definition["rpm"] == 30
    assert updated.updated_at > added.updated_at
    assert updated.created_at == added.created_at
    assert sdk.llm.models.get_registry_model(id="acme:chat-1").updated_at == updated.updated_at


def test_it_keeps_the_secret_when_auth_is_omitted(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    updated = sdk.llm.models.update_registry_model(id="acme:chat-1", display_name="Renamed")
    assert updated.definition["auth"] == {"type": "api-key", "value": MARKER}
    assert db_model("acme:chat-1").get_auth() == {"type": "api-key", "value": SECRET}


def test_it_replaces_the_secret_when_auth_is_sent(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    updated = sdk.llm.models.update_registry_model(
        id="acme:chat-1", auth={"type": "api-key", "envVar": "NEW_KEY"}
    )
    assert updated.definition["auth"] == {"type": "api-key", "envVar": "NEW_KEY"}
    assert db_model("acme:chat-1").get_auth() == {"type": "api-key", "envVar": "NEW_KEY"}
    assert SECRET not in db_model("acme:chat-1").auth_ciphertext


def test_it_refuses_to_update_a_yaml_model_with_403(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    sdk = sdk_for(world.alice)
    exc = sdk_error(sdk.llm.models.update_registry_model, id="cluster:chat-a", rpm=5)
    assert_error(exc, 403, "permission_error")
    assert "rpm" not in sdk.llm.models.get_registry_model(id="cluster:chat-a").definition


def test_it_answers_404_when_updating_an_unknown_model(world, make_model, sdk_for):
    make_model(world.org_b, "globex:secret")
    sdk = sdk_for(world.alice)
    for model_id in ("nope:missing", "globex:secret"):
        exc = sdk_error(sdk.llm.models.update_registry_model, id=model_id, rpm=5)
        assert_error(exc, 404, "not_found_error")
    assert db_model("globex:secret").rpm == 60


def test_it_validates_an_update_and_changes_nothing(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    exc = sdk_error(sdk.llm.models.update_registry_model, id="acme:chat-1", rpm=0)
    error = assert_error(exc, 400, "invalid_request_error")
    assert "rpm" in error["message"]
    assert db_model("acme:chat-1").rpm == 60


# --- remove ----------------------------------------------------------------------------------


def test_it_removes_a_model(world, sdk_for, http):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    raw = http.delete("/api/v1/llm/models/registry/acme:chat-1", headers=auth(world.alice))
    assert raw.status_code == 200
    assert raw.json() == {"deleted": True}
    exc = sdk_error(sdk.llm.models.get_registry_model, id="acme:chat-1")
    assert_error(exc, 404, "not_found_error")
    assert_error(sdk_error(sdk.llm.models.get, model_id="acme:chat-1"), 404, "not_found_error")
    exc = sdk_error(sdk.llm.models.remove_registry_model, id="acme:chat-1")
    assert_error(exc, 404, "not_found_error")


def test_it_removes_through_the_sdk(world, sdk_for):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    assert sdk.llm.models.remove_registry_model(id="acme:chat-1").deleted is True
    assert not RegistryModel.objects.exists()


def test_removing_a_model_removes_auto_overrides_pointing_to_it(world, sdk_for):
    put_grants(world.org_a, ["cluster:embed"], actor="test")
    sdk = sdk_for(world.alice)
    add(sdk, "acme:chat-1")
    sdk.llm.models.put_org_auto_model(endpoint="completions", model_id="acme:chat-1")
    sdk.llm.models.put_org_auto_model(endpoint="embeddings", model_id="cluster:embed")
    sdk.llm.models.remove_registry_model(id="acme:chat-1")
    autos = sdk.llm.models.list_org_auto_models().data
    assert [(a.endpoint, a.model_id) for a in autos] == [("embeddings", "cluster:embed")]


def test_it_refuses_to_remove_a_yaml_model_with_403(world, sdk_for):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    sdk = sdk_for(world.alice)
    exc = sdk_error(sdk.llm.models.remove_registry_model, id="cluster:chat-a")
    assert_error(exc, 403, "permission_error")
    assert sdk.llm.models.get_registry_model(id="cluster:chat-a").id == "cluster:chat-a"


def test_it_answers_404_when_removing_another_orgs_model(world, make_model, sdk_for):
    make_model(world.org_b, "globex:secret")
    exc = sdk_error(sdk_for(world.alice).llm.models.remove_registry_model, id="globex:secret")
    assert_error(exc, 404, "not_found_error")
    assert RegistryModel.objects.filter(registry_id="globex:secret").exists()


# --- health (op 8) ---------------------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A tiny HTTP server on 127.0.0.1: 503 under /down, 200 everywhere else."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            status = 503 if self.path.startswith("/down") else 200
            body = b'{"ok": true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = _answer
        do_HEAD = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Upstream(url=f"http://127.0.0.1:{server.server_address[1]}", requests=seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def loopback_allowed(settings: Any) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]


def test_a_healthy_upstream_is_available_and_stored(world, sdk_for, upstream, loopback_allowed):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:up", baseUrl=f"{upstream.url}/v1")
    before = now_ms()
    result = sdk.llm.models.check_registry_model_health(id="acme:up")
    assert result.is_available is True
    assert result.error is None
    assert before - 1000 <= result.checked_at <= now_ms() + 1000
    assert upstream.requests, "the probe never reached the upstream"

    health = sdk.llm.models.get_registry_model(id="acme:up").health
    assert health.is_available is True
    assert health.error is None
    assert health.last_health_check is not None
    assert abs(health.last_health_check - result.checked_at) <= 1
    listed = {m.id: m for m in sdk.llm.models.list_registry_models().data}
    assert listed["acme:up"].health.is_available is True
    assert listed["acme:up"].health.last_health_check == health.last_health_check


def test_the_health_wire_shape_is_ms_numbers(world, make_model, http, upstream, loopback_allowed):
    make_model(world.org_a, "acme:up", baseUrl=f"{upstream.url}/v1")
    response = http.post("/api/v1/llm/models/registry/acme:up/health", headers=auth(world.alice))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["is_available"] is True
    assert isinstance(body["checked_at"], int) and body["checked_at"] > 10**12
    assert body.get("error") is None


def test_a_503_upstream_is_unavailable_with_the_status_in_the_error(
    world, sdk_for, upstream, loopback_allowed
):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:down", baseUrl=f"{upstream.url}/down")
    result = sdk.llm.models.check_registry_model_health(id="acme:down")
    assert result.is_available is False
    assert result.error and "503" in result.error
    assert SECRET not in result.error
    health = sdk.llm.models.get_registry_model(id="acme:down").health
    assert health.is_available is False
    assert health.error == result.error
    assert health.last_health_check is not None


def test_a_recovered_upstream_turns_available_again(world, sdk_for, upstream, loopback_allowed):
    sdk = sdk_for(world.alice)
    add(sdk, "acme:flip", baseUrl=f"{upstream.url}/down")
    assert sdk.llm.models.check_registry_model_health(id="acme:flip").is_available is False
    sdk.llm.models.update_registry_model(id="acme:flip", base_url=f"{upstream.url}/v1")
    assert sdk.llm.models.check_registry_model_health(id="acme:flip").is_available is True
    health = sdk.llm.models.get_registry_model(id="acme:flip").health
    assert (health.is_available, health.error) == (True, None)


def test_health_probes_the_custom_health_check_path(world, sdk_for, upstream, loopback_allowed):
    sdk = sdk_for(world.alice)
    add(
        sdk,
        "acme:absolute",
        baseUrl=f"{upstream.url}/v1",
        healthCheck={"mode": "periodic", "intervalSeconds": 60, "path": "/custom/ping"},
    )
    add(
        sdk,
        "acme:relative",
        baseUrl=f"{upstream.url}/v1",
        healthCheck={"mode": "preflight", "path": "ready", "method": "HEAD"},
    )
    assert sdk.llm.models.check_registry_model_health(id="acme:absolute").is_available is True
    assert sdk.llm.models.check_registry_model_health(id="acme:relative").is_available is True
    assert [(method, path) for method, path, _ in upstream.requests] == [
        ("GET", "/custom/ping"),
        ("HEAD", "/v1/ready"),
    ]


def test_a_custom_health_check_path_that_fails_is_reported(
    world, sdk_for, upstream, loopback_allowed
):
    sdk = sdk_for(world.alice)
    add(
        sdk,
        "acme:custom-down",
        baseUrl=f"{upstream.url}/v1",
        healthCheck={"mode": "preflight", "path": "/down/health"},
    )
    result = sdk.llm.models.check_registry_model_health(id="acme:custom-down")
    assert result.is_available is False
    assert "503" in (result.error or "")
    assert [path for _, path, _ in upstream.requests] == ["/down/health"]


def test_without_the_allowlist_a_loopback_upstream_is_refused(world, sdk_for, upstream, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    sdk = sdk_for(world.alice)
    try:
        add(sdk, "acme:loop", baseUrl=f"{upstream.url}/v1")
    except errors.SDKError as exc:
        # Refused when saving: 400 naming baseUrl, nothing stored.
        error = assert_error(exc, 400, "invalid_request_error")
        assert error["param"] == "baseUrl"
        assert not RegistryModel.objects.exists()
    else:
        # Or accepted when saving and blocked by the probe, without any connection.
        result = sdk.llm.models.check_registry_model_health(id="acme:loop")
        assert result.is_available is False
        assert result.error and result.error.startswith("blocked")
    assert upstream.requests == []


def test_a_probe_is_blocked_once_the_allowlist_is_removed(world, sdk_for, upstream, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    sdk = sdk_for(world.alice)
    add(sdk, "acme:loop", baseUrl=f"{upstream.url}/v1")
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    result = sdk.llm.models.check_registry_model_health(id="acme:loop")
    assert result.is_available is False
    assert result.error and result.error.startswith("blocked")
    assert upstream.requests == []
    health = sdk.llm.models.get_registry_model(id="acme:loop").health
    assert (health.is_available, health.error) == (False, result.error)


def test_health_of_an_unknown_or_foreign_model_is_404(world, make_model, sdk_for):
    make_model(world.org_b, "globex:secret")
    sdk = sdk_for(world.alice)
    for model_id in ("nope:missing", "globex:secret", "cluster:embed"):
        exc = sdk_error(sdk.llm.models.check_registry_model_health, id=model_id)
        assert_error(exc, 404, "not_found_error")
