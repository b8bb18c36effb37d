"""What the upstream receives: auth per strategy (api-contract.md §5.3), defaultParams (§5.6) and
the upstream model name; secrets never leave the gateway (responses, headers, logs); clients cannot
redirect the call (RELIABILITY.md S9)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.conftest import SECRET, auth
from tests.gateway.conftest import chat_requests, user

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"
ENV_SECRET = "sk-canary-env-0b9e44d1-value"
HEADER_SECRET = "hdr-canary-3c7a9f00-value"
ENV_HEADER_SECRET = "hdr-canary-env-91d2ee57-value"
ALL_SECRETS = (SECRET, ENV_SECRET, HEADER_SECRET, ENV_HEADER_SECRET)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("gateway", "registry", "orgs", "django", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_no_secrets(response: Any, logs: pytest.LogCaptureFixture) -> None:
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in logs.records)
    for secret in ALL_SECRETS:
        assert secret not in response.text, f"secret in the response body: {response.text[:300]}"
        assert secret not in head, "secret in the response headers"
        assert secret not in logs.text, "secret in the logs"
        assert secret not in records, "secret in the log records"


def call(http: Any, who: Any, model: str, **extra: Any) -> Any:
    return http.post(CHAT, json={"model": model, "messages": user(), **extra}, headers=auth(who))


def received_headers(upstream: Any) -> dict[str, str]:
    return chat_requests(upstream)[-1]["headers"]


# ---------------------------------------------------------------------------------------------
# Auth strategies


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_UPSTREAM_KEY", ENV_SECRET)
    monkeypatch.setenv("GW_TEST_UPSTREAM_HEADER", ENV_HEADER_SECRET)


AUTH_CASES = {
    "api-key-value": (
        {"type": "api-key", "value": SECRET},
        {"authorization": f"Bearer {SECRET}"},
        (),
    ),
    "api-key-header-name": (
        {"type": "api-key", "value": SECRET, "headerName": "x-api-key"},
        {"x-api-key": SECRET},
        ("authorization",),
    ),
    "api-key-env-var": (
        {"type": "api-key", "envVar": "GW_TEST_UPSTREAM_KEY"},
        {"authorization": f"Bearer {ENV_SECRET}"},
        (),
    ),
    "api-key-env-var-header-name": (
        {"type": "api-key", "envVar": "GW_TEST_UPSTREAM_KEY", "headerName": "api-key"},
        {"api-key": ENV_SECRET},
        ("authorization",),
    ),
    "custom-headers": (
        {
            "type": "custom-headers",
            "headers": {"X-Org-Token": HEADER_SECRET, "X-Tenant": "acme"},
            "envVars": {"X-Env-Token": "GW_TEST_UPSTREAM_HEADER"},
        },
        {"x-org-token": HEADER_SECRET, "x-tenant": "acme", "x-env-token": ENV_HEADER_SECRET},
        ("authorization",),
    ),
    "composite": (
        {
            "type": "composite",
            "strategies": [
                {"type": "api-key", "value": SECRET},
                {"type": "custom-headers", "headers": {"X-Org-Token": HEADER_SECRET}},
                {"type": "api-key", "envVar": "GW_TEST_UPSTREAM_KEY", "headerName": "x-api-key"},
            ],
        },
        {
            "authorization": f"Bearer {SECRET}",
            "x-org-token": HEADER_SECRET,
            "x-api-key": ENV_SECRET,
        },
        (),
    ),
    "none": ({"type": "none"}, {}, ("authorization", "x-api-key")),
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
@pytest.mark.parametrize("path", [CHAT, STREAM])
def test_upstream_auth(case, path, world, gw_model, http, upstream, env, logs):
    strategy, expected, absent = AUTH_CASES[case]
    gw_model(world.org_a, "acme:up", "chunks@2", auth=strategy)

    r = http.post(path, json={"model": "acme:up", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200, r.text

    headers = received_headers(upstream)
    for name, value in expected.items():
        assert headers.get(name) == value, (name, headers)
    for name in absent:
        assert name not in headers, (name, headers)
    # The client's own gateway key never reaches the upstream.
    assert world.bob.token not in str(chat_requests(upstream))
    assert_no_secrets(r, logs)


def test_registry_answers_never_carry_secrets(world, gw_model, http, env, logs):
    strategy = AUTH_CASES["composite"][0]
    gw_model(world.org_a, "acme:up", auth=strategy)
    for path in ("/api/v1/llm/models/registry", "/api/v1/llm/models/registry/acme:up"):
        r = http.get(path, headers=auth(world.alice))
        assert r.status_code == 200, r.text
        assert_no_secrets(r, logs)
    assert "GW_TEST_UPSTREAM_KEY" in r.text  # env var names are not secret


def test_missing_env_var_is_502_naming_the_variable(world, gw_model, http, upstream, env, logs):
    gw_model(
        world.org_a,
        "acme:up",
        auth={
            "type": "composite",
            "strategies": [
                {"type": "api-key", "value": SECRET},
                {"type": "api-key", "envVar": "GW_TEST_NOT_SET_ANYWHERE", "headerName": "x-k"},
            ],
        },
    )
    for path in (CHAT, STREAM):
        r = http.post(path, json={"model": "acme:up", "messages": user()}, headers=auth(world.bob))
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["type"] == "upstream_error"
        assert error["code"] == 502
        assert "GW_TEST_NOT_SET_ANYWHERE" in error["message"]
        assert_no_secrets(r, logs)
    assert chat_requests(upstream) == []


def test_upstream_errors_do_not_leak_secrets(world, gw_model, http, upstream, env, logs):
    gw_model(world.org_a, "acme:bad", "fault-5xx", auth=AUTH_CASES["composite"][0])
    r = call(http, world.bob, "acme:bad")
    assert r.status_code == 502, r.text
    # The capture does see the live server's logs (Django logs every 5xx).
    assert any(rec.name == "django.request" for rec in logs.records)
    assert_no_secrets(r, logs)


# ---------------------------------------------------------------------------------------------
# Upstream body: model name and defaultParams


def test_upstream_model_is_the_model_id(world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up", "chunks@2+base-name", aliases=["nick"])
    assert call(http, world.bob, "nick").status_code == 200
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@2+base-name"


DEFAULTS = {"temperature": 0.2, "topP": 0.9, "presencePenalty": 0.5, "frequencyPenalty": -0.5}


def test_default_params_fill_in_unset_values(world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up", defaultParams=DEFAULTS)
    assert call(http, world.bob, "acme:up").status_code == 200
    body = chat_requests(upstream)[-1]["body"]
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["presence_penalty"] == 0.5
    assert body["frequency_penalty"] == -0.5
    assert "topP" not in body and "defaultParams" not in body


def test_default_params_do_not_override_the_request(world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up", defaultParams=DEFAULTS)
    r = call(http, world.bob, "acme:up", temperature=1.5, top_p=0.1, frequency_penalty=0)
    assert r.status_code == 200, r.text
    body = chat_requests(upstream)[-1]["body"]
    assert body["temperature"] == 1.5
    assert body["top_p"] == 0.1
    assert body["frequency_penalty"] == 0
    assert body["presence_penalty"] == 0.5  # not set by the request: the default


def test_default_params_on_the_stream_endpoint(world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up", defaultParams={"temperature": 0.3})
    r = http.post(
        STREAM,
        json={"model": "acme:up", "messages": user(), "top_p": 0.5},
        headers=auth(world.bob),
    )
    assert r.status_code == 200
    body = chat_requests(upstream)[-1]["body"]
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.5
    assert "presence_penalty" not in body


# ---------------------------------------------------------------------------------------------
# S9: the client cannot choose where the call goes or what credentials it carries


REDIRECTS = {
    "api_base": {"api_base": "http://127.0.0.1:9/v1"},
    "base_url": {"base_url": "http://127.0.0.1:9/v1"},
    "api_key": {"api_key": "sk-attacker"},
    "extra_headers": {"extra_headers": {"Authorization": "Bearer sk-attacker"}},
    "headers": {"headers": {"Authorization": "Bearer sk-attacker"}},
    "metadata.api_base": {"metadata": {"api_base": "http://127.0.0.1:9/v1"}},
    "extra_body.api_base": {"extra_body": {"api_base": "http://127.0.0.1:9/v1"}},
}


@pytest.mark.parametrize("case", list(REDIRECTS))
@pytest.mark.parametrize("path", [CHAT, STREAM])
def test_connection_settings_in_the_body_are_refused(case, path, world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up")
    body = {"model": "acme:up", "messages": user(), **REDIRECTS[case]}
    r = http.post(path, json=body, headers=auth(world.bob))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == case.split(".")[0]
    assert upstream.requests() == []
