"""Client disconnects, stream resumption and the stream response cache (api-contract.md §8.4
"Client disconnects" and "x-last-chunk-index"; RELIABILITY.md T8).

- `POST /chat/completions` (both forms) has no resumption: a disconnect cancels the upstream call
  at once (the stand-in upstream records the close as a client disconnect).
- `POST /chat/completions/stream` keeps the upstream running for a grace window so that the
  client can come back with `x-last-chunk-index: N` and get the chunks after N; identical
  requests (same org, same end user, same body) within the cache window are served from cache.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import auth

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"


# ---------------------------------------------------------------------------------------------
# Helpers


def unique(prefix: str = "acme:d") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def body_for(model: str, text: str | None = None, **extra: Any) -> dict[str, Any]:
    content = text if text is not None else f"hello {uuid.uuid4().hex[:8]}"
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """Events of an SSE body as dicts of their fields; comment blocks become {"comment": ...}."""
    events = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        fields: dict[str, Any] = {}
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                fields.setdefault("comment", line)
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        events.append(fields)
    return events


def read_until(response: httpx.Response, count: int, want: str = "message") -> list[dict]:
    """Read a streaming response until `count` events of kind `want` arrived (then stop)."""
    buffer = b""
    seen: list[dict[str, Any]] = []
    for data in response.iter_bytes():
        buffer += data
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            [event] = parse_events(block + b"\n\n") or [{}]
            kind = event.get("event") or ("data" if "data" in event else None)
            if kind == want:
                seen.append(event)
            if len(seen) >= count:
                return seen
    raise AssertionError(f"the stream ended after {len(seen)} of {count} events")


def stream_all(
    http: httpx.Client, who: Any, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], bytes]:
    """POST to the stream endpoint and read the whole answer."""
    with http.stream(
        "POST",
        STREAM,
        json=body,
        headers={**auth(who), "Accept": "text/event-stream", **(headers or {})},
        timeout=15,
    ) as response:
        raw = b"".join(response.iter_bytes())
    if response.status_code != 200:
        return response.status_code, [], raw
    return 200, [e for e in parse_events(raw) if "comment" not in e], raw


def message_ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events if e.get("event") == "message"]


def content(events: list[dict[str, Any]]) -> str:
    out = ""
    for event in events:
        if event.get("event") == "message":
            for choice in json.loads(event["data"])["choices"]:
                out += (choice.get("delta") or {}).get("content") or ""
    return out


def chat_requests(server: Any) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["path"].endswith("/chat/completions")]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def full_answer(chunks: int) -> str:
    return "".join(f"tok{i} " for i in range(chunks))


@pytest.fixture
def model(world: Any, gw_model: Any) -> Any:
    def make(upstream_model: str, org: Any = None, model_id: str | None = None) -> str:
        model_id = model_id or unique()
        gw_model(org or world.org_a, model_id, upstream_model)
        return model_id

    return make


# ---------------------------------------------------------------------------------------------
# (a) and (b): POST /chat/completions cancels the upstream at once


def test_disconnect_mid_stream_on_chat_completions_cancels_upstream(world, http, model, upstream):
    model_id = model("delay@100+chunks@50")
    with http.stream(
        "POST",
        CHAT,
        json=body_for(model_id, stream=True),
        headers={**auth(world.bob), "Accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        read_until(response, 3, want="data")
        assert upstream.stats()["open_streams"] == 1
    closed_at = time.monotonic()
    stats = upstream.wait_stats(timeout=1.5, client_disconnects=1)
    elapsed = time.monotonic() - closed_at
    assert stats["client_disconnects"] == 1, stats
    assert elapsed < 1.0, f"the upstream saw the disconnect after {elapsed:.2f} s"
    assert stats["completed_streams"] == 0
    assert len(chat_requests(upstream)) == 1


def test_disconnect_during_non_streaming_call_cancels_upstream(world, live_url, model, upstream):
    model_id = model("delay@100+chunks@30")  # the non-streaming answer takes 3 s
    payload = json.dumps(body_for(model_id)).encode()
    url = urlsplit(live_url)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {world.bob.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=5)
    try:
        sock.sendall(head + payload)
        assert wait_for(lambda: upstream.stats()["open_requests"] == 1, 3.0), upstream.stats()
        time.sleep(0.2)
    finally:
        sock.close()
    closed_at = time.monotonic()
    stats = upstream.wait_stats(timeout=1.5, client_disconnects=1)
    elapsed = time.monotonic() - closed_at
    assert stats["client_disconnects"] == 1, stats
    assert elapsed < 1.0, f"the upstream saw the disconnect after {elapsed:.2f} s"
    assert upstream.stats()["open_requests"] == 0


# ---------------------------------------------------------------------------------------------
# (c) the stream endpoint keeps the upstream running; a reconnect resumes after N


def test_stream_disconnect_keeps_upstream_and_resume_replays_after_index(
    world, http, model, upstream
):
    model_id = model("delay@50+chunks@12")
    body = body_for(model_id)
    with http.stream(
        "POST", STREAM, json=body, headers={**auth(world.bob), "Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        first = read_until(response, 3)
    assert [int(e["id"]) for e in first] == [0, 1, 2]

    # The upstream is not cancelled: it runs to the end.
    stats = upstream.wait_stats(timeout=3.0, completed_streams=1)
    assert stats["completed_streams"] == 1, stats
    assert stats["client_disconnects"] == 0

    status, events, raw = stream_all(http, world.bob, body, {"x-last-chunk-index": "2"})
    assert status == 200, raw
    assert events[-1] == {"event": "done", "data": "null"}
    ids = message_ids(events)
    assert ids == list(range(3, 13))  # 12 content chunks + the final chunk, id 12
    assert content(first) + content(events) == full_answer(12)
    final = json.loads(events[-2]["data"])
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 12
    assert len(chat_requests(upstream)) == 1


def test_stream_resume_while_upstream_still_running_continues_live(world, http, model, upstream):
    model_id = model("delay@100+chunks@15")  # about 1.5 s
    body = body_for(model_id)
    with http.stream(
        "POST", STREAM, json=body, headers={**auth(world.bob), "Accept": "text/event-stream"}
    ) as response:
        first = read_until(response, 3)
    assert upstream.stats()["completed_streams"] == 0

    status, events, raw = stream_all(http, world.bob, body, {"x-last-chunk-index": "2"})
    assert status == 200, raw
    assert events[-1]["event"] == "done"
    assert message_ids(events) == list(range(3, 16))
    assert content(first) + content(events) == full_answer(15)
    assert len(chat_requests(upstream)) == 1
    assert upstream.stats()["client_disconnects"] == 0


def test_stream_resume_through_sdk(world, http, model, upstream, sdk_for):
    model_id = model("chunks@6")
    sdk = sdk_for(world.bob)
    messages = [{"role": "user", "content": f"sdk {uuid.uuid4().hex[:6]}"}]
    first = list(sdk.llm.chat.stream(model=model_id, messages=messages))
    assert first[-1].event == "done"
    assert [e.id for e in first[:-1]] == [str(i) for i in range(7)]

    again = list(
        sdk.llm.chat.stream(
            model=model_id, messages=messages, http_headers={"x-last-chunk-index": "4"}
        )
    )
    assert [e.event for e in again] == ["message", "message", "done"]
    assert [e.id for e in again[:-1]] == ["5", "6"]
    assert again[-2].data.choices[0].finish_reason == "stop"
    assert len(chat_requests(upstream)) == 1


def test_resume_past_the_end_gives_only_done(world, http, model, upstream):
    model_id = model("chunks@3")
    body = body_for(model_id)
    status, events, _ = stream_all(http, world.bob, body)
    assert status == 200 and message_ids(events) == [0, 1, 2, 3]
    status, events, raw = stream_all(http, world.bob, body, {"x-last-chunk-index": "3"})
    assert status == 200, raw
    assert events == [{"event": "done", "data": "null"}]
    assert len(chat_requests(upstream)) == 1


# ---------------------------------------------------------------------------------------------
# (d) grace window


def test_stream_disconnect_with_zero_grace_cancels_upstream(world, http, model, upstream, settings):
    settings.CHAT_STREAM_RESUME_GRACE_SECONDS = 0
    model_id = model("delay@100+chunks@50")
    with http.stream(
        "POST",
        STREAM,
        json=body_for(model_id),
        headers={**auth(world.bob), "Accept": "text/event-stream"},
    ) as response:
        read_until(response, 2)
    closed_at = time.monotonic()
    stats = upstream.wait_stats(timeout=1.5, client_disconnects=1)
    elapsed = time.monotonic() - closed_at
    assert stats["client_disconnects"] == 1, stats
    assert elapsed < 1.0, f"the upstream saw the cancel after {elapsed:.2f} s"
    assert stats["completed_streams"] == 0


def test_stream_disconnect_cancels_upstream_after_grace(world, http, model, upstream, settings):
    settings.CHAT_STREAM_RESUME_GRACE_SECONDS = 0.6
    model_id = model("delay@100+chunks@50")
    with http.stream(
        "POST",
        STREAM,
        json=body_for(model_id),
        headers={**auth(world.bob), "Accept": "text/event-stream"},
    ) as response:
        read_until(response, 2)
    closed_at = time.monotonic()
    time.sleep(0.3)
    assert upstream.stats()["client_disconnects"] == 0  # still inside the grace window
    stats = upstream.wait_stats(timeout=2.0, client_disconnects=1)
    elapsed = time.monotonic() - closed_at
    assert stats["client_disconnects"] == 1, stats
    assert 0.5 <= elapsed < 1.6, elapsed
    assert stats["completed_streams"] == 0


# ---------------------------------------------------------------------------------------------
# (e) the response cache


def test_identical_request_is_answered_from_cache(world, http, model, upstream):
    model_id = model("chunks@4")
    body = body_for(model_id)
    status, first, _ = stream_all(http, world.bob, body)
    assert status == 200 and first[-1]["event"] == "done"
    # Same org, no end user, same body; another key of the same org shares the cache.
    for who in (world.bob, world.alice):
        status, again, _ = stream_all(http, who, body)
        assert status == 200
        assert message_ids(again) == message_ids(first)
        assert content(again) == content(first) == full_answer(4)
        assert again[-1] == {"event": "done", "data": "null"}
    assert len(chat_requests(upstream)) == 1


def test_cache_can_be_disabled(world, http, model, upstream, settings):
    settings.CHAT_STREAM_CACHE_SECONDS = 0
    model_id = model("chunks@4")
    body = body_for(model_id)
    for _ in range(2):
        status, events, _ = stream_all(http, world.bob, body)
        assert status == 200 and events[-1]["event"] == "done"
        assert content(events) == full_answer(4)
    assert len(chat_requests(upstream)) == 2


def test_cache_is_scoped_by_org(world, http, model, upstream):
    model_id = unique()
    model("chunks@4", org=world.org_a, model_id=model_id)
    model("chunks@4", org=world.org_b, model_id=model_id)
    body = body_for(model_id, text="same body in both orgs")
    for who in (world.bob, world.dave):
        status, events, _ = stream_all(http, who, body)
        assert status == 200 and events[-1]["event"] == "done"
    assert len(chat_requests(upstream)) == 2


def test_cache_is_scoped_by_end_user(world, http, model, upstream):
    model_id = model("chunks@4")
    body = body_for(model_id)
    for end_user in ("user-1", "user-2", "user-1"):
        status, events, _ = stream_all(http, world.bob, body, {"X-On-Behalf-Of": end_user})
        assert status == 200 and events[-1]["event"] == "done"
    # Without the header the org level is a scope of its own.
    status, events, _ = stream_all(http, world.bob, body)
    assert status == 200
    assert len(chat_requests(upstream)) == 3


# ---------------------------------------------------------------------------------------------
# (f) invalid x-last-chunk-index, (g) resume without a session


def test_invalid_last_chunk_index_is_400(world, http, model, upstream):
    model_id = model("chunks@3")
    for value in ("abc", "-2", "1.5", "", "0x1", "99999999999999999999999999x"):
        status, _, raw = stream_all(
            http, world.bob, body_for(model_id), {"x-last-chunk-index": value}
        )
        assert status == 400, (value, raw)
        error = json.loads(raw)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == 400
        assert error["param"] == "x-last-chunk-index"
    assert chat_requests(upstream) == []


def test_last_chunk_index_minus_one_is_the_whole_answer(world, http, model):
    model_id = model("chunks@3")
    status, events, raw = stream_all(
        http, world.bob, body_for(model_id), {"x-last-chunk-index": "-1"}
    )
    assert status == 200, raw
    assert message_ids(events) == [0, 1, 2, 3]
    assert events[-1]["event"] == "done"


def test_last_chunk_index_without_session_skips_chunks(world, http, model, upstream):
    model_id = model("chunks@5")
    status, events, raw = stream_all(
        http, world.bob, body_for(model_id), {"x-last-chunk-index": "2"}
    )
    assert status == 200, raw
    assert message_ids(events) == [3, 4, 5]
    assert content(events) == "tok3 tok4 "
    assert events[-1] == {"event": "done", "data": "null"}
    final = json.loads(events[-2]["data"])
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 5
    assert len(chat_requests(upstream)) == 1
