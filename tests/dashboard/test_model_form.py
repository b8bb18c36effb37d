"""Creating and editing org models through the form: the whole definition, errors from the
API's schema shown next to their fields, write-only secrets, and "Test connection"."""

from __future__ import annotations

import json
import re

import pytest

from orgs.models import AuditEvent
from registry.models import RegistryModel
from registry.schemas import SECRET_MARKER
from tests.dashboard.conftest import CANARY, HEADER_CANARY, HTMX, form_data
from tests.upstream_server import UpstreamServer

NEW = "/orgs/org-acme/models/new"
EDIT = "/orgs/org-acme/models/edit/acme:chat-1"


def stored(model_id: str = "acme:new-model") -> RegistryModel:
    return RegistryModel.objects.get(registry_id=model_id)


def field_error(body: str, field: str) -> str:
    """The error text shown under a field (the part of the page after its input)."""
    start = body.index(f'name="{field}"')
    chunk = body[start : start + 3000]
    if '<p class="error"' not in chunk.split('<div class="field')[0]:
        return ""
    return chunk.split('<p class="error" hx-disable>')[1].split("</p>")[0]


# --- create ------------------------------------------------------------------------------------


def test_the_create_form_starts_with_sensible_defaults(people, login):
    body = login(people.alice).get(NEW).content.decode()
    assert 'name="created" value="' in body
    assert 'value="completions" selected' in body
    assert 'name="input_modalities" value="text"' in body and "checked" in body


def test_it_adds_a_model_with_the_whole_definition(people, login):
    data = form_data(
        aliases="acme:alias-1, acme:alias-2",
        hidden="on",
        public_name="Public",
        request_timeout_ms="30000",
        max_retries="2",
        auth_header_name="X-Api-Key",
        input_modalities=["text", "image"],
        reasoning="on",
        supports_temperature="true",
        supports_top_p="false",
        base64_formats="image/png, image/jpeg",
        max_image_width="2048",
        max_image_height="1024",
        min_image_width="16",
        min_image_height="8",
        temperature="0.2",
        top_p="0.9",
        presence_penalty="-1",
        frequency_penalty="1.5",
        hc_mode="periodic",
        hc_path="/health",
        hc_interval_seconds="60",
        hc_method="HEAD",
        hc_timeout_ms="2000",
        hc_cache_ttl_seconds="30",
        rate_limits='[{"scope": "org", "rpm": 10}]',
        embedding_limits='{"maxBatchSize": 16}',
        concurrency='{"max": 4, "maxWaitMs": 100}',
    )
    response = login(people.alice).post(NEW, data)
    assert response.status_code == 302
    assert response["Location"] == "/orgs/org-acme/models"
    model = stored()
    d = model.full_definition()
    assert d["auth"] == {"type": "api-key", "value": CANARY, "headerName": "X-Api-Key"}
    assert d["aliases"] == ["acme:alias-1", "acme:alias-2"]
    assert d["hidden"] is True
    assert d["publicName"] == "Public"
    assert d["requestTimeoutMs"] == 30000 and d["maxRetries"] == 2
    assert d["capabilities"] == {
        "modalities": {"input": ["text", "image"], "output": ["text"]},
        "reasoning": True,
        "supportsTemperature": True,
        "supportsTopP": False,
        "supportedBase64Formats": ["image/png", "image/jpeg"],
        "maxImageResolution": {"maxWidth": 2048, "maxHeight": 1024},
        "minImageResolution": {"maxWidth": 16, "maxHeight": 8},
    }
    assert d["defaultParams"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "presencePenalty": -1.0,
        "frequencyPenalty": 1.5,
    }
    assert d["healthCheck"] == {
        "mode": "periodic",
        "path": "/health",
        "intervalSeconds": 60,
        "method": "HEAD",
        "timeoutMs": 2000,
        "cacheTtlSeconds": 30,
    }
    assert d["rateLimits"] == [{"scope": "org", "rpm": 10}]
    assert d["embeddingLimits"] == {"maxBatchSize": 16}
    assert d["concurrency"] == {"max": 4, "maxWaitMs": 100}
    assert d["contextWindow"] == 16384 and d["rpm"] == 30
    event = AuditEvent.objects.get(action="model.added")
    assert event.actor == "user:alice"
    assert CANARY not in json.dumps(event.changes)


def test_after_adding_the_list_says_so(people, login):
    client = login(people.alice)
    response = client.post(NEW, form_data(), follow=True)
    assert "Model acme:new-model added." in response.content.decode()


def test_htmx_success_is_a_client_redirect(people, login):
    response = login(people.alice).post(NEW, form_data(), headers=HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/orgs/org-acme/models"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"base_url": "http://169.254.169.254/latest"}, "base_url", "Host 169.254.169.254 is a"),
        ({"base_url": "file:///etc/passwd"}, "base_url", "Scheme must be http"),
        ({"id": "auto"}, "id", "reserved"),
        ({"id": "has space"}, "id", "whitespace"),
        ({"provider": "zero\u200bwidth"}, "provider", "invisible"),
        ({"input_modalities": []}, "input_modalities", "Must have at least 1"),
        ({"output_modalities": []}, "output_modalities", "Must have at least 1"),
        ({"aliases": "ok, bad alias"}, "aliases", "aliases[1]"),
        ({"temperature": "3"}, "temperature", "Must be at most 2.0"),
        ({"context_window": "0"}, "context_window", "Must be greater than 0"),
        ({"hc_mode": "periodic", "hc_path": "/h"}, "hc_interval_seconds", "Is required"),
        ({"hc_mode": "preflight", "hc_path": "https://x/h"}, "hc_path", "Must be a path"),
        ({"hc_mode": "legacy", "hc_url": "gopher://x"}, "hc_url", "Scheme must be http"),
        ({"max_image_width": "100"}, "max_image_height", "Is required"),
        ({"rate_limits": '[{"scope": "planet", "rpm": 1}]'}, "rate_limits", "rateLimits[0].scope"),
        ({"rate_limits": "[{nope"}, "rate_limits", "not valid JSON"),
        (
            {"reroute_rules": '[{"trigger": {"type": "error-fallback"}, "targetModelId": "x:y"}]'},
            "reroute_rules",
            "rerouteRules[0].targetModelId",
        ),
        (
            {"embedding_limits": '{"dimensions": {"min": 9, "max": 2, "default": 3}}'},
            "embedding_limits",
            "default &lt;= max",
        ),
        ({"concurrency": '{"max": 0}'}, "concurrency", "concurrency.max"),
        ({"auth_value": "", "auth_env_var": ""}, "auth_value", "Exactly one of value or envVar"),
        ({"auth_env_var": "NOT-AN-ENV"}, "auth_env_var", "environment variable"),
        ({"auth_value": SECRET_MARKER}, "auth_value", "redaction marker"),
        ({"auth_type": "custom-headers", "auth_headers": "no colon"}, "auth_headers", "line 1"),
        (
            {"auth_type": "custom-headers", "auth_headers": "Bad Header: v"},
            "auth_headers",
            "valid HTTP header",
        ),
        ({"auth_type": "composite", "auth_composite": "{"}, "auth_composite", "not valid JSON"),
        (
            {"auth_type": "composite", "auth_composite": '{"type": "composite", "strategies": []}'},
            "auth_composite",
            "auth.strategies",
        ),
        ({"created": "soon"}, "created", "whole number"),
    ],
)
def test_errors_are_shown_next_to_their_field(people, login, overrides, field, message):
    data = form_data(**overrides)
    response = login(people.alice).post(NEW, data)
    assert response.status_code == 200
    body = response.content.decode()
    assert "The model was not saved" in body
    shown = field_error(body, field)
    assert message in shown, shown
    # Next to a plain field the wire path ("baseUrl: …") is left out: the label says which.
    if field not in (
        "aliases",
        "rate_limits",
        "reroute_rules",
        "embedding_limits",
        "concurrency",
        "auth_composite",
    ):
        assert not re.match(r"[a-z]+[A-Z.]\w*: ", shown), shown
    assert not RegistryModel.objects.exists()
    # What the user typed is kept (except secrets).
    assert 'value="New model"' in body
    assert CANARY not in body


def test_a_taken_id_is_a_conflict_on_the_id_field(people, login, make_model, granted):
    make_model(people.org_a, "acme:new-model")
    body = login(people.alice).post(NEW, form_data()).content.decode()
    assert "already" in field_error(body, "id")
    body = login(people.alice).post(NEW, form_data(id="cluster:chat-a")).content.decode()
    assert "YAML models cannot be overridden" in field_error(body, "id")


def test_an_invalid_htmx_post_returns_the_form_fragment(people, login):
    response = login(people.alice).post(NEW, form_data(rpm="-5"), headers=HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert body.lstrip().startswith('<form id="model-form"')
    assert "Must be greater than 0" in field_error(body, "rpm")


def test_typed_secrets_are_never_echoed_after_an_error(people, login):
    client = login(people.alice)
    body = client.post(NEW, form_data(rpm="-1")).content.decode()
    assert CANARY not in body
    assert "The API key you typed was not kept" in body
    body = client.post(
        NEW,
        form_data(
            rpm="-1",
            auth_type="custom-headers",
            auth_headers=f"X-Key: {HEADER_CANARY}\nX-Other: {CANARY}",
        ),
    ).content.decode()
    assert HEADER_CANARY not in body and CANARY not in body
    assert "X-Key:" in body and "X-Other:" in body
    composite = {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": CANARY},
            {"type": "custom-headers", "headers": {"X-H": HEADER_CANARY}},
        ],
    }
    body = client.post(
        NEW, form_data(rpm="-1", auth_type="composite", auth_composite=json.dumps(composite))
    ).content.decode()
    assert HEADER_CANARY not in body and CANARY not in body
    assert SECRET_MARKER in body
    # Broken JSON with secrets in it is scrubbed too.
    broken = f'{{"type": "composite", "strategies": [{{"type": "api-key", "value": "{CANARY}"}},'
    body = client.post(
        NEW, form_data(auth_type="composite", auth_composite=broken)
    ).content.decode()
    assert CANARY not in body


def test_custom_headers_and_composite_auth_are_stored(people, login):
    client = login(people.alice)
    client.post(
        NEW,
        form_data(
            id="acme:h",
            auth_type="custom-headers",
            auth_headers=f"X-Key: {HEADER_CANARY}\n\nX-Team: blue",
            auth_env_vars="X-Env: MY_ENV",
        ),
    )
    assert stored("acme:h").get_auth() == {
        "type": "custom-headers",
        "headers": {"X-Key": HEADER_CANARY, "X-Team": "blue"},
        "envVars": {"X-Env": "MY_ENV"},
    }
    composite = {
        "type": "composite",
        "strategies": [{"type": "api-key", "envVar": "KEY"}, {"type": "none"}],
    }
    client.post(
        NEW, form_data(id="acme:c", auth_type="composite", auth_composite=json.dumps(composite))
    )
    assert stored("acme:c").get_auth() == composite
    client.post(NEW, form_data(id="acme:n", auth_type="none", auth_value=""))
    assert stored("acme:n").get_auth() == {"type": "none"}


# --- edit --------------------------------------------------------------------------------------


@pytest.fixture
def model(people, make_model):
    return make_model(
        people.org_a,
        "acme:chat-1",
        aliases=["acme:old"],
        defaultParams={"temperature": 0.5},
        healthCheck={"mode": "periodic", "path": "/health", "intervalSeconds": 60},
        rateLimits=[{"scope": "org", "rpm": 5}],
    )


def edit_data(**overrides):
    """The edit form as the browser posts it back unchanged (the key field left blank)."""
    data = form_data(
        display_name="Chat one",
        model_id="chat-1",
        context_window="8192",
        rpm="60",
        auth_value="",
        aliases="acme:old",
        temperature="0.5",
        hc_mode="periodic",
        hc_path="/health",
        hc_interval_seconds="60",
        rate_limits='[{"scope": "org", "rpm": 5}]',
    )
    del data["id"]
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_the_edit_form_shows_the_definition_but_never_the_secret(people, login, model):
    body = login(people.alice).get(EDIT).content.decode()
    assert CANARY not in body
    assert 'value="Chat one"' in body
    assert 'name="auth_value"' in body and 'name="auth_value" value' not in body
    assert "An API key is stored" in body
    assert 'value="acme:old"' in body
    assert "&quot;scope&quot;: &quot;org&quot;" in body  # the JSON textarea
    assert 'name="id"' not in body  # ids cannot change


def test_an_unchanged_form_changes_nothing(people, login, model):
    before = stored("acme:chat-1").full_definition()
    response = login(people.alice).post(EDIT, edit_data())
    assert response.status_code == 302, response.content.decode()[:3000]
    assert stored("acme:chat-1").full_definition() == before
    assert not AuditEvent.objects.filter(action="model.updated").exists()


def test_a_blank_key_keeps_the_stored_secret(people, login, model):
    login(people.alice).post(EDIT, edit_data(display_name="Renamed"))
    m = stored("acme:chat-1")
    assert m.definition["displayName"] == "Renamed"
    assert m.get_auth() == {"type": "api-key", "value": CANARY}
    event = AuditEvent.objects.get(action="model.updated")
    assert set(event.changes) == {"displayName"}  # auth was not sent


def test_a_new_key_replaces_the_stored_one(people, login, model):
    login(people.alice).post(EDIT, edit_data(auth_value="sk-new-value"))
    assert stored("acme:chat-1").get_auth() == {"type": "api-key", "value": "sk-new-value"}


def test_switching_to_an_env_var_drops_the_stored_key(people, login, model):
    login(people.alice).post(EDIT, edit_data(auth_env_var="OPENAI_API_KEY"))
    assert stored("acme:chat-1").get_auth() == {"type": "api-key", "envVar": "OPENAI_API_KEY"}


def test_a_header_name_change_keeps_the_secret(people, login, model):
    login(people.alice).post(EDIT, edit_data(auth_header_name="X-Api-Key"))
    assert stored("acme:chat-1").get_auth() == {
        "type": "api-key",
        "value": CANARY,
        "headerName": "X-Api-Key",
    }


def test_emptied_fields_are_cleared(people, login, model):
    response = login(people.alice).post(
        EDIT,
        edit_data(
            display_name="",
            rpm="",
            aliases="",
            temperature="",
            hc_mode="",
            rate_limits="",
            context_window="",
        ),
    )
    assert response.status_code == 302
    d = stored("acme:chat-1").definition
    for key in ("displayName", "rpm", "aliases", "defaultParams", "healthCheck", "rateLimits"):
        assert key not in d, key
    assert "contextWindow" not in d
    assert d["provider"] == "openai-compatible"


def test_edit_errors_keep_the_input_and_the_secret_stays(people, login, model, settings):
    response = login(people.alice).post(
        EDIT, edit_data(display_name="Typed", base_url="http://10.0.0.1/v1", auth_value="sk-typed")
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "is a private address" in field_error(body, "base_url")
    assert 'value="Typed"' in body
    assert "sk-typed" not in body and CANARY not in body
    assert stored("acme:chat-1").get_auth()["value"] == CANARY


def test_custom_header_values_are_write_only(people, login, make_model):
    make_model(
        people.org_a,
        "acme:chat-1",
        auth={"type": "custom-headers", "headers": {"X-Key": HEADER_CANARY, "X-Team": "blue"}},
    )
    client = login(people.alice)
    body = client.get(EDIT).content.decode()
    assert HEADER_CANARY not in body and "blue" not in body
    assert f"X-Key: {SECRET_MARKER}" in body
    # Keep X-Key (marker), keep X-Team (empty value), add X-New.
    data = edit_data(
        auth_type="custom-headers",
        auth_headers=f"X-Key: {SECRET_MARKER}\nX-Team:\nX-New: fresh",
    )
    assert client.post(EDIT, data).status_code == 302
    assert stored("acme:chat-1").get_auth()["headers"] == {
        "X-Key": HEADER_CANARY,
        "X-Team": "blue",
        "X-New": "fresh",
    }
    # Leaving a header out removes it; a marker for an unknown header is refused.
    client.post(EDIT, edit_data(auth_type="custom-headers", auth_headers="X-Key:"))
    assert stored("acme:chat-1").get_auth()["headers"] == {"X-Key": HEADER_CANARY}
    body = client.post(
        EDIT, edit_data(auth_type="custom-headers", auth_headers=f"X-Unknown: {SECRET_MARKER}")
    ).content.decode()
    assert "redaction marker" in field_error(body, "auth_headers")


def test_composite_markers_keep_the_secret_at_their_position(people, login, make_model):
    composite = {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": CANARY},
            {"type": "custom-headers", "headers": {"X-H": HEADER_CANARY}},
        ],
    }
    make_model(people.org_a, "acme:chat-1", auth=composite)
    client = login(people.alice)
    body = client.get(EDIT).content.decode()
    assert CANARY not in body and HEADER_CANARY not in body
    assert body.count(SECRET_MARKER) >= 2
    shown = {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": SECRET_MARKER, "headerName": "X-Key"},
            {"type": "custom-headers", "headers": {"X-H": SECRET_MARKER, "X-New": "v"}},
        ],
    }
    response = client.post(EDIT, edit_data(auth_type="composite", auth_composite=json.dumps(shown)))
    assert response.status_code == 302
    assert stored("acme:chat-1").get_auth() == {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": CANARY, "headerName": "X-Key"},
            {"type": "custom-headers", "headers": {"X-H": HEADER_CANARY, "X-New": "v"}},
        ],
    }
    # A marker where nothing was stored is refused by the schema.
    moved = {
        "type": "composite",
        "strategies": [{"type": "none"}, {"type": "api-key", "value": SECRET_MARKER}],
    }
    body = client.post(
        EDIT, edit_data(auth_type="composite", auth_composite=json.dumps(moved))
    ).content.decode()
    assert "redaction marker" in field_error(body, "auth_composite")


def test_operator_models_and_other_orgs_models_cannot_be_edited(people, login, make_model, granted):
    make_model(people.org_b, "globex:chat")
    client = login(people.alice)
    assert client.get("/orgs/org-acme/models/edit/cluster:chat-a").status_code == 404
    assert client.get("/orgs/org-acme/models/edit/globex:chat").status_code == 404
    assert client.post("/orgs/org-acme/models/edit/globex:chat", edit_data()).status_code == 404


def test_ids_with_slashes_work(people, login, make_model):
    make_model(people.org_a, "acme:team/model-1")
    client = login(people.alice)
    assert client.get("/orgs/org-acme/models/edit/acme:team/model-1").status_code == 200
    assert (
        "/orgs/org-acme/models/edit/acme:team/model-1"
        in client.get("/orgs/org-acme/models").content.decode()
    )


# --- test connection -----------------------------------------------------------------------------


@pytest.fixture
def upstream(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


def test_test_connection_probes_the_unsaved_form(people, login, upstream):
    data = form_data(base_url=upstream.url + "/v1", hc_mode="preflight", hc_path="/health")
    response = login(people.alice).post("/orgs/org-acme/models/test", data, headers=HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert "Connection works" in body and "HTTP 200" in body
    assert CANARY not in body
    assert not RegistryModel.objects.exists()
    [probe] = upstream.requests()
    assert probe["path"] == "/health"
    assert probe["headers"]["authorization"] == f"Bearer {CANARY}"


def test_test_connection_reports_failures_without_bodies(people, login, upstream):
    data = form_data(base_url=upstream.url + "/v1", hc_mode="preflight", hc_path="/health/503")
    body = (
        login(people.alice).post("/orgs/org-acme/models/test", data, headers=HTMX).content.decode()
    )
    assert "Connection failed" in body and "HTTP 503" in body
    assert "unavailable" not in body  # the upstream's body is never read


def test_test_connection_applies_the_ssrf_rules(people, login, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    for url in ("http://127.0.0.1:9/v1", "http://169.254.169.254/v1", "http://[::1]/v1"):
        body = (
            login(people.alice)
            .post("/orgs/org-acme/models/test", form_data(base_url=url), headers=HTMX)
            .content.decode()
        )
        assert "Connection failed" in body, url
        assert "blocked" in body or "not allowed" in body, body


def test_test_connection_uses_the_stored_secret_on_edit(people, login, make_model, upstream):
    make_model(people.org_a, "acme:chat-1", baseUrl=upstream.url + "/v1")
    data = edit_data(base_url=upstream.url + "/v1", hc_mode="preflight", hc_path="/health")
    body = (
        login(people.alice)
        .post("/orgs/org-acme/models/test/acme:chat-1", data, headers=HTMX)
        .content.decode()
    )
    assert "Connection works" in body
    assert upstream.requests()[0]["headers"]["authorization"] == f"Bearer {CANARY}"
    assert CANARY not in body


def test_test_connection_explains_an_invalid_form(people, login):
    body = (
        login(people.alice)
        .post("/orgs/org-acme/models/test", form_data(rpm="x", provider=""), headers=HTMX)
        .content.decode()
    )
    assert "Fix the form first" in body
    assert "Requests per minute" in body


def test_test_connection_without_javascript_renders_the_form(people, login, upstream):
    data = form_data(base_url=upstream.url + "/v1", hc_mode="preflight", hc_path="/health")
    response = login(people.alice).post("/orgs/org-acme/models/test", data)
    body = response.content.decode()
    assert "<html" in body and "Connection works" in body
    assert 'value="New model"' in body and CANARY not in body
