"""Chat completions through the real clients (api-contract.md §8): meetkai-mka1 `create_chat` and
`stream`, the `openai` client, the exact oRPC bytes, and model resolution (§6.4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from meetkai_mka1 import errors

from registry.services import put_grants
from tests.conftest import auth
from tests.gateway.conftest import answer, chat_requests, user

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The §2.2 error object of an httpx response with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    error = response.json()["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


def sse_frames(text: str) -> list[str]:
    assert text.endswith("\n\n"), text[-200:]
    return text[:-2].split("\n\n")


# ---------------------------------------------------------------------------------------------
# meetkai-mka1


def test_sdk_create_chat_returns_typed_completion(world, gw_model, sdk_for, upstream):
    gw_model(world.org_a, "acme:up")
    res = sdk_for(world.bob).llm.chat.create_chat(model="acme:up", messages=user("hello"))

    assert res.model == "acme:up"
    assert res.object == "chat.completion"
    assert res.id and isinstance(res.created, int)
    assert len(res.choices) == 1
    choice = res.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == answer(5)
    assert choice.finish_reason == "stop"
    assert res.usage.completion_tokens == 5
    assert res.usage.prompt_tokens >= 1
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    # The upstream saw one non-streaming request for its own model name.
    [sent] = chat_requests(upstream)
    assert sent["body"]["model"] == "chunks@5"
    assert "stream" not in sent["body"] or sent["body"]["stream"] is False


def test_sdk_create_chat_stream_returns_openai_sse_text(world, gw_model, sdk_for):
    gw_model(world.org_a, "acme:up")
    raw = sdk_for(world.bob).llm.chat.create_chat(model="acme:up", messages=user(), stream=True)

    assert isinstance(raw, str)
    frames = sse_frames(raw)
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)
    assert "event:" not in raw
    chunks = [json.loads(f[len("data: ") :]) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "acme:up" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == answer(5)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # No stream_options.include_usage: no usage chunk.
    assert all(c["choices"] and not c.get("usage") for c in chunks)


def test_sdk_stream_events(world, gw_model, sdk_for, usage_rows):
    gw_model(world.org_a, "acme:up", "chunks@4")
    with sdk_for(world.bob).llm.chat.stream(
        model="acme:up", messages=user(), x_on_behalf_of="end-user-42"
    ) as stream:
        events = list(stream)

    assert [e.event for e in events] == ["message"] * (len(events) - 1) + ["done"]
    messages = events[:-1]
    assert len(messages) == 5  # four content chunks and the finishing chunk
    assert [e.id for e in messages] == [str(i) for i in range(len(messages))]
    assert events[-1].data is None
    assert "".join(e.data.choices[0].delta.content or "" for e in messages) == answer(4)
    assert all(e.data.model == "acme:up" for e in messages)
    # Usage on the final message chunk only.
    assert all(e.data.usage is None for e in messages[:-1])
    final = messages[-1].data
    assert final.choices[0].finish_reason == "stop"
    assert final.usage.completion_tokens == 4
    assert final.usage.total_tokens == final.usage.prompt_tokens + 4
    [row] = usage_rows(org=world.org_a)
    assert row.end_user == "end-user-42"


# ---------------------------------------------------------------------------------------------
# openai


def test_openai_non_streaming(world, gw_model, openai_for):
    gw_model(world.org_a, "acme:up", "chunks@3")
    res = openai_for(world.bob).chat.completions.create(model="acme:up", messages=user())
    assert res.model == "acme:up"
    assert res.choices[0].message.content == answer(3)
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens == 3


def test_openai_streaming_with_usage(world, gw_model, openai_for):
    gw_model(world.org_a, "acme:up", "chunks@6")
    chunks = list(
        openai_for(world.bob).chat.completions.create(
            model="acme:up",
            messages=user(),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    tokens = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert tokens == [f"tok{i} " for i in range(6)]
    assert all(c.model == "acme:up" for c in chunks)
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens == 6
    assert final.usage.total_tokens == final.usage.prompt_tokens + 6
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_streaming_without_usage(world, gw_model, openai_for):
    gw_model(world.org_a, "acme:up", "chunks@3")
    chunks = list(
        openai_for(world.bob).chat.completions.create(model="acme:up", messages=user(), stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer(3)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


# ---------------------------------------------------------------------------------------------
# Exact bytes of the oRPC framing (§8.4)


def test_orpc_stream_exact_framing(world, gw_model, http):
    gw_model(world.org_a, "acme:up", "chunks@2")
    r = http.post(STREAM, json={"model": "acme:up", "messages": user()}, headers=auth(world.bob))

    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-gateway-model"] == "acme:up"
    frames = sse_frames(r.text)
    assert frames[-1] == "event: done\ndata: null"
    assert "[DONE]" not in r.text
    messages = frames[:-1]
    assert len(messages) == 3
    for index, frame in enumerate(messages):
        lines = frame.split("\n")
        assert lines[:2] == ["event: message", f"id: {index}"]
        assert len(lines) == 3 and lines[2].startswith("data: {")
        chunk = json.loads(lines[2][len("data: ") :])
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "acme:up"
        assert "finish_reason" in chunk["choices"][0]
        assert ("usage" in chunk) == (index == len(messages) - 1)
    first = json.loads(messages[0].split("\n")[2][len("data: ") :])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "tok0 "}
    last = json.loads(messages[-1].split("\n")[2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert set(last["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_openai_sse_exact_framing(world, gw_model, http):
    gw_model(world.org_a, "acme:up", "chunks@2")
    body = {"model": "acme:up", "messages": user(), "stream": True}
    r = http.post(CHAT, json=body, headers=auth(world.bob))
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == "text/event-stream"
    assert r.headers["x-gateway-model"] == "acme:up"
    frames = sse_frames(r.text)
    assert frames[-1] == "data: [DONE]"
    assert len(frames) == 4  # two content chunks, the finishing chunk, [DONE]
    assert all(f.startswith("data: {") and "\n" not in f for f in frames[:-1])


# ---------------------------------------------------------------------------------------------
# Resolution


def test_alias_resolves_to_the_model(world, gw_model, http):
    gw_model(world.org_a, "acme:up", aliases=["friendly"])
    r = http.post(CHAT, json={"model": "friendly", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "acme:up"
    assert r.headers["x-gateway-model"] == "acme:up"


def test_hidden_model_is_usable_by_id(world, gw_model, http, sdk_for):
    gw_model(world.org_a, "acme:hidden", hidden=True)
    listed = [m.id for m in sdk_for(world.bob).llm.models.list().data]
    assert "acme:hidden" not in listed
    r = http.post(CHAT, json={"model": "acme:hidden", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "acme:hidden"


def test_auto_uses_the_yaml_default(world, http, upstream):
    """The operator default for completions is cluster:chat-a (it lives at api.example.com, so
    the request is made to stop at the context-window check, before any network call)."""
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    body = {"model": "auto", "messages": user(), "max_tokens": 9000}  # > its window of 8192
    r = http.post(CHAT, json=body, headers=auth(world.bob))
    error = error_of(r, 400)
    assert "cluster:chat-a" in error["message"]
    assert "8192" in error["message"]
    assert chat_requests(upstream) == []


def test_auto_yaml_default_answers(world, http, upstream, upstream_cluster):
    """End to end through an operator YAML whose completions default is on the test upstream."""
    put_grants(world.org_a, ["op:chat"], actor="test")
    r = http.post(CHAT, json={"model": "auto", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "op:chat"
    assert r.json()["choices"][0]["message"]["content"] == answer(2)
    assert r.headers["x-gateway-model"] == "op:chat"
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@2"


def test_auto_default_must_be_granted(world, http, upstream, upstream_cluster):
    r = http.post(CHAT, json={"model": "auto", "messages": user()}, headers=auth(world.bob))
    error = error_of(r, 400)
    assert error["param"] == "model"
    assert chat_requests(upstream) == []


def test_auto_uses_the_org_override(world, gw_model, http, upstream):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    gw_model(world.org_a, "acme:auto-target", "chunks@3")
    put = http.put(
        "/api/v1/llm/models/auto/completions",
        json={"modelId": "acme:auto-target"},
        headers=auth(world.alice),
    )
    assert put.status_code == 200, put.text

    r = http.post(CHAT, json={"model": "auto", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "acme:auto-target"
    assert r.json()["choices"][0]["message"]["content"] == answer(3)
    assert r.headers["x-gateway-model"] == "acme:auto-target"
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@3"


def test_auto_stream_reports_the_resolved_model(world, gw_model, http):
    gw_model(world.org_a, "acme:auto-target", "chunks@1")
    http.put(
        "/api/v1/llm/models/auto/completions",
        json={"modelId": "acme:auto-target"},
        headers=auth(world.alice),
    ).raise_for_status()
    r = http.post(STREAM, json={"model": "auto", "messages": user()}, headers=auth(world.bob))
    assert r.status_code == 200
    assert r.headers["x-gateway-model"] == "acme:auto-target"
    assert '"model":"acme:auto-target"' in r.text
    assert '"model":"auto"' not in r.text


@pytest.mark.parametrize("path", [CHAT, STREAM])
def test_unknown_model_is_404(world, http, upstream, path):
    r = http.post(path, json={"model": "acme:nope", "messages": user()}, headers=auth(world.bob))
    error = error_of(r, 404)
    assert error["type"] == "not_found_error"
    assert error["param"] == "model"
    assert chat_requests(upstream) == []


def test_ungranted_cluster_model_is_404(world, http, upstream):
    put_grants(world.org_a, ["cluster:chat-a"], actor="test")
    for name in ("cluster:chat-b", "cluster:hidden-chat"):
        r = http.post(CHAT, json={"model": name, "messages": user()}, headers=auth(world.bob))
        assert error_of(r, 404)["param"] == "model"


def test_other_orgs_model_is_404(world, gw_model, http, upstream):
    gw_model(world.org_b, "globex:private", aliases=["globex-alias"])
    for name in ("globex:private", "globex-alias"):
        r = http.post(CHAT, json={"model": name, "messages": user()}, headers=auth(world.alice))
        error = error_of(r, 404)
        assert error["param"] == "model"
    assert chat_requests(upstream) == []
    # Org B itself can use it.
    r = http.post(
        CHAT, json={"model": "globex:private", "messages": user()}, headers=auth(world.dave)
    )
    assert r.status_code == 200, r.text


def test_embeddings_model_is_400(world, http, upstream):
    put_grants(world.org_a, ["cluster:embed"], actor="test")
    r = http.post(
        CHAT, json={"model": "cluster:embed", "messages": user()}, headers=auth(world.bob)
    )
    error = error_of(r, 400)
    assert error["param"] == "model"
    assert "embeddings" in error["message"]


def test_sdk_unknown_model_raises_404(world, sdk_for):
    with pytest.raises(errors.SDKError) as info:
        sdk_for(world.bob).llm.chat.create_chat(model="acme:nope", messages=user())
    assert info.value.status_code == 404
    assert json.loads(info.value.body)["error"]["param"] == "model"
