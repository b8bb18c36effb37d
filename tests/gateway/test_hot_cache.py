"""The hot-path caches (keys, routes, stream sessions) never answer from stale configuration: each
change takes effect on the very next request. And malformed chat bodies (RELIABILITY.md V4) are
400s naming the field, before any upstream call."""

from __future__ import annotations

from typing import Any

import pytest

from orgs.services import revoke_api_key
from registry.services import put_grants, remove_model
from tests.conftest import auth
from tests.gateway.conftest import answer, chat_requests, user

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"
PATHS = [CHAT, STREAM]


def chat(http: Any, who: Any, model: str, path: str = CHAT, text: str = "hi") -> Any:
    return http.post(path, json={"model": model, "messages": user(text)}, headers=auth(who))


def ok(r: Any) -> Any:
    assert r.status_code == 200, r.text
    return r


def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    return r.json()["error"]


def set_auto(http: Any, who: Any, model_id: str) -> None:
    r = http.put(
        "/api/v1/llm/models/auto/completions", json={"modelId": model_id}, headers=auth(who)
    )
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# (a) keys


@pytest.mark.parametrize("path", PATHS)
def test_revoked_key_fails_on_the_next_request(world, gw_model, http, upstream, path):
    gw_model(world.org_a, "acme:up")
    # Twice: the second answer may come from the key cache (and, for the stream, the session).
    ok(chat(http, world.bob, "acme:up", path))
    ok(chat(http, world.bob, "acme:up", path))
    before = len(chat_requests(upstream))

    revoke_api_key(world.bob.key)

    error = error_of(chat(http, world.bob, "acme:up", path), 401)
    assert error["type"] == "authentication_error"
    assert len(chat_requests(upstream)) == before
    ok(chat(http, world.alice, "acme:up", path))  # other keys of the org still work


# ---------------------------------------------------------------------------------------------
# (b) grants and models


@pytest.mark.parametrize("path", PATHS)
def test_removed_grant_is_404_on_the_next_request(world, http, upstream, upstream_cluster, path):
    put_grants(world.org_a, ["op:chat", "op:chat-b"], actor="test")
    ok(chat(http, world.bob, "op:chat", path))
    ok(chat(http, world.bob, "op:chat", path))
    before = len(chat_requests(upstream))

    put_grants(world.org_a, ["op:chat-b"], actor="test")

    assert error_of(chat(http, world.bob, "op:chat", path), 404)["param"] == "model"
    assert len(chat_requests(upstream)) == before
    ok(chat(http, world.bob, "op:chat-b", path))


@pytest.mark.parametrize("path", PATHS)
def test_removed_model_is_404_on_the_next_request(world, gw_model, http, upstream, path):
    gw_model(world.org_a, "acme:up", aliases=["nick"])
    for name in ("acme:up", "nick", "acme:up"):
        ok(chat(http, world.bob, name, path))
    before = len(chat_requests(upstream))

    remove_model(world.org_a, "acme:up", actor="test")

    for name in ("acme:up", "nick"):
        assert error_of(chat(http, world.bob, name, path), 404)["param"] == "model"
    assert len(chat_requests(upstream)) == before


def test_new_model_and_new_grant_work_right_after_a_404(
    world, gw_model, http, upstream, upstream_cluster
):
    """A cached "not found" must not outlive the change that makes the name resolvable."""
    assert error_of(chat(http, world.bob, "acme:later"), 404)["param"] == "model"
    assert error_of(chat(http, world.bob, "op:chat-b"), 404)["param"] == "model"

    gw_model(world.org_a, "acme:later", "chunks@1")
    put_grants(world.org_a, ["op:chat-b"], actor="test")

    assert ok(chat(http, world.bob, "acme:later")).json()["model"] == "acme:later"
    assert ok(chat(http, world.bob, "op:chat-b")).json()["model"] == "op:chat-b"


# ---------------------------------------------------------------------------------------------
# (c) auto models


@pytest.mark.parametrize("path", PATHS)
def test_changed_auto_model_applies_to_the_next_request(
    world, gw_model, http, upstream, upstream_cluster, path, settings
):
    # Returning to a route answered before may be a (correct) cache hit on the stream endpoint;
    # this test is about resolution, so the response cache is off.
    settings.CHAT_STREAM_CACHE_SECONDS = 0
    put_grants(world.org_a, ["op:chat"], actor="test")
    gw_model(world.org_a, "acme:first", "chunks@4")
    gw_model(world.org_a, "acme:second", "chunks@6")

    # The YAML default first, then the org's override, then another override, then cleared.
    steps = [
        (None, "op:chat", "chunks@2"),
        ("acme:first", "acme:first", "chunks@4"),
        ("acme:second", "acme:second", "chunks@6"),
        ("", "op:chat", "chunks@2"),
    ]
    for override, expected, upstream_model in steps:
        if override:
            set_auto(http, world.alice, override)
        elif override == "":
            r = http.delete("/api/v1/llm/models/auto/completions", headers=auth(world.alice))
            assert r.status_code == 200 and r.json()["cleared"] is True
        for _ in range(2):  # the repeat may be served from caches
            r = ok(chat(http, world.bob, "auto", path))
            assert r.headers["x-gateway-model"] == expected
            assert f'"model":"{expected}"' in r.text.replace(" ", "")
        assert chat_requests(upstream)[-1]["body"]["model"] == upstream_model


def test_removing_the_auto_target_falls_back_to_the_yaml_default(
    world, gw_model, http, upstream, upstream_cluster
):
    put_grants(world.org_a, ["op:chat"], actor="test")
    gw_model(world.org_a, "acme:auto", "chunks@4")
    set_auto(http, world.alice, "acme:auto")
    assert ok(chat(http, world.bob, "auto")).json()["model"] == "acme:auto"

    remove_model(world.org_a, "acme:auto", actor="test")

    assert ok(chat(http, world.bob, "auto")).json()["model"] == "op:chat"


# ---------------------------------------------------------------------------------------------
# (d) model edits


@pytest.mark.parametrize("path", PATHS)
def test_edited_model_id_is_sent_on_the_next_request(
    world, gw_model, http, upstream, sdk_for, path
):
    gw_model(world.org_a, "acme:up", "chunks@2")
    first = ok(chat(http, world.bob, "acme:up", path))
    ok(chat(http, world.bob, "acme:up", path))
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@2"
    assert answer(2).split()[-1] in first.text

    sdk_for(world.alice).llm.models.update_registry_model(id="acme:up", model_id="chunks@3")

    r = ok(chat(http, world.bob, "acme:up", path))
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@3"
    assert "tok2 " in r.text  # a fresh answer, not the cached stream session


def test_edited_auth_and_context_window_apply_at_once(world, gw_model, http, upstream, sdk_for):
    gw_model(world.org_a, "acme:up", auth={"type": "none"})
    ok(chat(http, world.bob, "acme:up"))
    assert "authorization" not in chat_requests(upstream)[-1]["headers"]

    sdk = sdk_for(world.alice)
    sdk.llm.models.update_registry_model(
        id="acme:up", auth={"type": "custom-headers", "headers": {"X-Team": "blue"}}
    )
    ok(chat(http, world.bob, "acme:up"))
    assert chat_requests(upstream)[-1]["headers"]["x-team"] == "blue"

    sdk.llm.models.update_registry_model(id="acme:up", context_window=10)
    before = len(chat_requests(upstream))
    r = chat(http, world.bob, "acme:up", text="word " * 200)
    assert "context window" in error_of(r, 400)["message"]
    assert len(chat_requests(upstream)) == before


# ---------------------------------------------------------------------------------------------
# V4: malformed bodies are 400s naming the field, and nothing reaches the upstream

GOOD = {"model": "acme:up", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"role": "user", "content": "hi"}

# case: (body, the top-level field `param` starts with, a word the message contains)
INVALID = {
    "messages-not-a-list": ({**GOOD, "messages": "hi"}, "messages", "messages"),
    "messages-object": ({**GOOD, "messages": MESSAGE}, "messages", "messages"),
    "messages-empty": ({**GOOD, "messages": []}, "messages", "messages"),
    "content-int": ({**GOOD, "messages": [{**MESSAGE, "content": 5}]}, "messages", "content"),
    "content-null": ({**GOOD, "messages": [{**MESSAGE, "content": None}]}, "messages", "content"),
    "unknown-role": ({**GOOD, "messages": [{**MESSAGE, "role": "wizard"}]}, "messages", "role"),
    "temperature-string": ({**GOOD, "temperature": "hot"}, "temperature", "temperature"),
    "temperature-negative": ({**GOOD, "temperature": -1}, "temperature", "temperature"),
    "temperature-too-high": ({**GOOD, "temperature": 2.5}, "temperature", "temperature"),
    "max-tokens-zero": ({**GOOD, "max_tokens": 0}, "max_tokens", "max_tokens"),
    "max-tokens-negative": ({**GOOD, "max_tokens": -1}, "max_tokens", "max_tokens"),
    "max-tokens-huge": ({**GOOD, "max_tokens": 2**63}, "max_tokens", "max_tokens"),
    "max-tokens-string": ({**GOOD, "max_tokens": "10"}, "max_tokens", "max_tokens"),
    "n-1000": ({**GOOD, "n": 1000}, "n", "n"),
    "stream-yes": ({**GOOD, "stream": "yes"}, "stream", "stream"),
    "model-int": ({**GOOD, "model": 7}, "model", "model"),
    "model-missing": ({"messages": GOOD["messages"]}, "model", "model"),
    "top-p-too-high": ({**GOOD, "top_p": 1.5}, "top_p", "top_p"),
    "stop-too-many": ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop", "stop"),
}


def top_field(param: str | None) -> str:
    return (param or "").split("[")[0].split(".")[0]


def problems_with(r: Any, field: str | None, word: str | None) -> str | None:
    """Why `r` is not a 400 naming `field` (None when it is)."""
    if r.status_code != 400 or r.headers["content-type"].split(";")[0] != "application/json":
        return f"{r.status_code} {r.text[:200]}"
    error = r.json()["error"]
    if error["type"] != "invalid_request_error" or error["code"] != 400:
        return f"error {error}"
    if field is not None and top_field(error["param"]) != field:
        return f"param {error['param']!r}, expected {field!r}: {error}"
    if word is not None and word not in error["message"]:
        return f"message does not name {word!r}: {error}"
    return None


# One test per endpoint walks all the cases (a world per case would cost seconds), and reports
# every case that fails, not only the first.


@pytest.mark.parametrize("path", PATHS)
def test_invalid_body_is_400_naming_the_field(path, world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up")
    failures = {}
    for case, (body, field, word) in INVALID.items():
        problem = problems_with(http.post(path, json=body, headers=auth(world.bob)), field, word)
        if problem:
            failures[case] = problem
    assert failures == {}
    assert upstream.requests() == []


RAW_BASE = b'{"model": "acme:up", "messages": [{"role": "user", "content": "hi"}]'
RAW_INVALID = {
    "temperature-nan": RAW_BASE + b', "temperature": NaN}',
    "temperature-infinity": RAW_BASE + b', "temperature": Infinity}',
    "temperature-1e309": RAW_BASE + b', "temperature": 1e309}',
    "not-json": b"{not json",
    "truncated": RAW_BASE,
    "array": b"[]",
    "string": b'"text"',
    "null": b"null",
    "empty": b"",
}


@pytest.mark.parametrize("path", PATHS)
def test_unparseable_and_non_object_bodies_are_400(path, world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:up")
    headers = {**auth(world.bob), "content-type": "application/json"}
    failures = {}
    for case, raw in RAW_INVALID.items():
        problem = problems_with(http.post(path, content=raw, headers=headers), None, None)
        if problem:
            failures[case] = problem
    assert failures == {}
    assert upstream.requests() == []


def test_invalid_body_after_a_cached_answer_is_still_400(world, gw_model, http, upstream):
    """A valid request primes every cache; a broken one right after is still validated."""
    gw_model(world.org_a, "acme:up", "chunks@1")
    ok(chat(http, world.bob, "acme:up", STREAM))
    before = len(upstream.requests())
    body = {**GOOD, "temperature": "hot"}
    assert error_of(http.post(STREAM, json=body, headers=auth(world.bob)), 400)["param"] == (
        "temperature"
    )
    assert len(upstream.requests()) == before
