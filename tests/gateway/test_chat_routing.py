"""Reroute rules (api-contract.md §5.7), the context-window check, and usage records."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from gateway.models import UsageRecord
from tests.conftest import auth
from tests.gateway.conftest import answer, chat_requests, user

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
TEXT_AND_IMAGE = {
    "modalities": {"input": ["text", "image"], "output": ["text"]},
    "reasoning": False,
}


def post(http: Any, who: Any, body: dict[str, Any], path: str = CHAT, **headers: str) -> Any:
    return http.post(path, json=body, headers={**auth(who), **headers})


def image_message(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def rule(trigger: dict[str, Any], target: str) -> list[dict[str, Any]]:
    return [{"trigger": trigger, "targetModelId": target}]


def assert_rerouted(r: Any, upstream: Any, rows: Any, *, source: str, target: str, reason: str):
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-model"] == target
    assert r.headers["x-gateway-rerouted-from"] == source
    [row] = rows()
    assert row.model_id == target
    assert row.rerouted_from == source
    assert row.reroute_reason == reason
    assert row.status_code == 200
    return row


# ---------------------------------------------------------------------------------------------
# Reroute rules


def test_input_modality_reroutes_images(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:vision", "chunks@2", capabilities=TEXT_AND_IMAGE)
    gw_model(
        world.org_a,
        "acme:text",
        "chunks@5",
        rerouteRules=rule({"type": "input-modality", "modality": "image"}, "acme:vision"),
    )
    # Text only: no reroute.
    plain = post(http, world.bob, {"model": "acme:text", "messages": user()})
    assert plain.status_code == 200
    assert "x-gateway-rerouted-from" not in plain.headers
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@5"

    r = post(
        http, world.bob, {"model": "acme:text", "messages": image_message("https://e.x/a.png")}
    )
    assert r.json()["model"] == "acme:vision"
    assert r.json()["choices"][0]["message"]["content"] == answer(2)
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@2"
    [_, row] = usage_rows(2)
    assert row.rerouted_from == "acme:text"
    assert row.reroute_reason == "input-modality"
    assert row.model_id == "acme:vision"
    assert row.requested_model == "acme:text"
    assert r.headers["x-gateway-rerouted-from"] == "acme:text"
    assert r.headers["x-gateway-model"] == "acme:vision"


def test_base64_input_reroutes_data_urls(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:b64", "chunks@2", capabilities=TEXT_AND_IMAGE)
    gw_model(
        world.org_a,
        "acme:urls-only",
        "chunks@5",
        capabilities=TEXT_AND_IMAGE,
        rerouteRules=rule({"type": "base64-input"}, "acme:b64"),
    )
    # A remote image URL is not base64 input.
    remote = post(
        http, world.bob, {"model": "acme:urls-only", "messages": image_message("https://e.x/a.png")}
    )
    assert remote.status_code == 200
    assert "x-gateway-rerouted-from" not in remote.headers
    usage_rows(1)
    UsageRecord.objects.all().delete()

    body = {"model": "acme:urls-only", "messages": image_message(f"data:image/png;base64,{PNG}")}
    r = post(http, world.bob, body)
    assert_rerouted(
        r, upstream, usage_rows, source="acme:urls-only", target="acme:b64", reason="base64-input"
    )
    assert chat_requests(upstream)[-1]["body"]["model"] == "chunks@2"


def test_context_exceeded_reroutes_instead_of_400(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:long", "chunks@2", contextWindow=128_000)
    gw_model(
        world.org_a,
        "acme:short",
        "chunks@5",
        contextWindow=100,
        rerouteRules=rule({"type": "context-exceeded"}, "acme:long"),
    )
    r = post(http, world.bob, {"model": "acme:short", "messages": user("word " * 2000)})
    assert_rerouted(
        r, upstream, usage_rows, source="acme:short", target="acme:long", reason="context-exceeded"
    )
    assert r.json()["model"] == "acme:long"
    [sent] = chat_requests(upstream)
    assert sent["body"]["model"] == "chunks@2"


def test_error_fallback_answers_from_the_target(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:backup", "chunks@3")
    gw_model(
        world.org_a,
        "acme:flaky",
        "fault-5xx",
        rerouteRules=rule({"type": "error-fallback"}, "acme:backup"),
    )
    r = post(http, world.bob, {"model": "acme:flaky", "messages": user()})
    row = assert_rerouted(
        r, upstream, usage_rows, source="acme:flaky", target="acme:backup", reason="error-fallback"
    )
    assert r.json()["choices"][0]["message"]["content"] == answer(3)
    assert [q["body"]["model"] for q in chat_requests(upstream)] == ["fault-5xx", "chunks@3"]
    assert row.completion_tokens == 3


def test_error_fallback_on_the_stream_endpoint(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:backup", "chunks@3")
    gw_model(
        world.org_a,
        "acme:flaky",
        "fault-5xx",
        rerouteRules=rule({"type": "error-fallback"}, "acme:backup"),
    )
    r = post(http, world.bob, {"model": "acme:flaky", "messages": user()}, path=STREAM)
    row = assert_rerouted(
        r, upstream, usage_rows, source="acme:flaky", target="acme:backup", reason="error-fallback"
    )
    assert r.text.endswith("event: done\ndata: null\n\n")
    assert '"model":"acme:backup"' in r.text
    assert row.stream is True


def test_no_fallback_rule_means_502(world, gw_model, http, upstream, usage_rows):
    gw_model(world.org_a, "acme:flaky", "fault-5xx")
    r = post(http, world.bob, {"model": "acme:flaky", "messages": user()})
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error"
    assert "x-gateway-rerouted-from" not in r.headers
    [row] = usage_rows()
    assert row.status_code == 502
    assert row.requested_model == "acme:flaky"
    assert row.rerouted_from == ""


# ---------------------------------------------------------------------------------------------
# Context window


@pytest.mark.parametrize("path", [CHAT, STREAM])
def test_prompt_that_cannot_fit_is_400(world, gw_model, http, upstream, path):
    gw_model(world.org_a, "acme:short", contextWindow=100)
    r = post(http, world.bob, {"model": "acme:short", "messages": user("word " * 2000)}, path=path)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "context window" in error["message"]
    assert "100" in error["message"]
    assert upstream.requests() == []


def test_max_tokens_counts_against_the_window(world, gw_model, http, upstream):
    gw_model(world.org_a, "acme:short", contextWindow=100)
    r = post(http, world.bob, {"model": "acme:short", "messages": user(), "max_tokens": 500})
    assert r.status_code == 400, r.text
    assert "context window" in r.json()["error"]["message"]
    assert upstream.requests() == []
    ok = post(http, world.bob, {"model": "acme:short", "messages": user(), "max_tokens": 50})
    assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------------------------------------
# Usage records


def test_usage_record_non_streaming(world, gw_model, http, usage_rows):
    gw_model(world.org_a, "acme:up", "chunks@5")
    text = "hello world, how are you"  # 24 characters: the upstream counts 6 prompt tokens
    r = post(
        http,
        world.bob,
        {"model": "acme:up", "messages": user(text)},
        **{"X-On-Behalf-Of": "end-user-7"},
    )
    assert r.status_code == 200
    [row] = usage_rows()
    assert row.org_id == world.org_a.pk
    assert row.api_key_id == world.bob.key.pk
    assert row.end_user == "end-user-7"
    assert row.endpoint == "chat.completions"
    assert row.requested_model == "acme:up"
    assert row.model_id == "acme:up"
    assert row.stream is False
    assert row.status_code == 200
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (6, 5, 11)
    assert r.json()["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}


def test_usage_record_streaming(world, gw_model, http, usage_rows):
    gw_model(world.org_a, "acme:up", "chunks@4+delay@20")
    r = post(
        http,
        world.bob,
        {"model": "acme:up", "messages": user("abcdefgh")},
        path=STREAM,
        **{"X-On-Behalf-Of": "eu-stream"},
    )
    assert r.status_code == 200
    [row] = usage_rows()
    assert row.endpoint == "chat.stream"
    assert row.stream is True
    assert row.end_user == "eu-stream"
    assert row.api_key_id == world.bob.key.pk
    assert row.status_code == 200
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (2, 4, 6)
    assert row.ttft_ms is not None
    assert 0 <= row.ttft_ms <= row.latency_ms


def test_usage_record_openai_stream_without_include_usage(world, gw_model, http, usage_rows):
    """The client did not ask for usage; the gateway still records the upstream's counts."""
    gw_model(world.org_a, "acme:up", "chunks@3")
    body = {"model": "acme:up", "messages": user("abcdefgh"), "stream": True}
    r = post(http, world.alice, body)
    assert r.status_code == 200
    assert '"usage"' not in r.text
    [row] = usage_rows()
    assert row.api_key_id == world.alice.key.pk
    assert row.end_user == ""
    assert row.stream is True
    assert (row.prompt_tokens, row.completion_tokens) == (2, 3)
    assert row.ttft_ms is not None


@pytest.mark.parametrize("path", [CHAT, STREAM])
def test_usage_computed_when_the_upstream_reports_none(world, gw_model, http, usage_rows, path):
    gw_model(world.org_a, "acme:quiet", "chunks@5+no-usage")
    r = post(http, world.bob, {"model": "acme:quiet", "messages": user("x" * 40)}, path=path)
    assert r.status_code == 200
    [row] = usage_rows()
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 0
    assert row.total_tokens == row.prompt_tokens + row.completion_tokens
    if path == CHAT:
        reported = r.json()["usage"]
    else:
        last = [f for f in r.text.split("\n\n") if f.startswith("event: message")][-1]
        reported = json.loads(last.split("data: ", 1)[1])["usage"]
    assert reported["prompt_tokens"] == row.prompt_tokens
    assert reported["completion_tokens"] == row.completion_tokens


def test_one_usage_record_per_request(world, gw_model, http, usage_rows):
    gw_model(world.org_a, "acme:up", "chunks@1")
    for index in range(3):
        body = {"model": "acme:up", "messages": user(f"question {index}")}
        assert post(http, world.bob, body).status_code == 200
        assert post(http, world.bob, body, path=STREAM).status_code == 200
    rows = usage_rows(6)
    assert len(rows) == 6
    assert sorted(r.endpoint for r in rows) == ["chat.completions"] * 3 + ["chat.stream"] * 3
    # Nothing else trickles in afterwards.
    assert len(usage_rows(7, timeout=0.3)) == 6


def test_one_usage_record_per_stream_request_even_when_shared(
    world, gw_model, http, live_url, upstream, usage_rows
):
    """Identical stream requests share one upstream call (§8.4 response cache), but each request
    is still one usage record: a replay of a finished answer, and a join of a running one."""
    gw_model(world.org_a, "acme:slow", "chunks@5+delay@100")
    body = {"model": "acme:slow", "messages": user("same question")}
    results: dict[str, Any] = {}

    def first() -> None:
        with httpx.Client(base_url=live_url, timeout=10) as client:
            results["first"] = post(client, world.bob, body, path=STREAM)

    thread = threading.Thread(target=first)
    thread.start()
    upstream.wait_stats(timeout=3, open_streams=1)
    joined = post(http, world.bob, body, path=STREAM)  # joins the running session
    thread.join(timeout=10)
    replayed = post(http, world.bob, body, path=STREAM)  # served from the finished session

    for r in (results["first"], joined, replayed):
        assert r.status_code == 200
        assert r.text.endswith("event: done\ndata: null\n\n")
        assert answer(5).split()[-1] in r.text
    assert upstream.stats()["requests"] == 1
    rows = usage_rows(3, timeout=2)
    assert len(rows) == 3, [(r.status_code, r.cached) for r in rows]
    assert all(r.status_code == 200 and r.model_id == "acme:slow" for r in rows)
