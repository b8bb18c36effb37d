"""The fake OpenAI-compatible upstream (`tests/upstream_server.py`), driven by httpx and `openai`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.upstream_server import (
    BAD_SSE_TEXT,
    INTERNAL_SECRET,
    Options,
    UpstreamServer,
    answer_text,
    parse_options,
    start_subprocess,
    stop_subprocess,
)

MESSAGES = [{"role": "user", "content": "Say hello to the upstream!"}]  # 26 chars -> 6 tokens


@pytest.fixture(scope="module")
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as up:
        yield up


@pytest.fixture
def up(server: UpstreamServer) -> UpstreamServer:
    server.reset()
    return server


@pytest.fixture
def http(up: UpstreamServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=5) as client:
        yield client


@pytest.fixture
def client(up: UpstreamServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=up.url + "/v1", api_key="x", max_retries=0, timeout=5) as oai:
        yield oai


def chat(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": stream, **extra}


def sse_data(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body (any line ending)."""
    lines = raw.replace("\r\n", "\n").split("\n")
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def test_it_parses_options_from_the_model_name() -> None:
    assert parse_options("gpt-test") == Options()
    opts = parse_options("base+chunks@5+delay@20+first@100+no-usage+fault-reset@2")
    assert (opts.chunks, opts.delay_ms, opts.first_ms, opts.usage) == (5, 20, 100, False)
    assert (opts.fault, opts.fault_arg) == ("fault-reset", 2)
    assert parse_options("chunks@nope").chunks == 20
    assert answer_text("chunks@3") == "tok0 tok1 tok2 "


def test_it_answers_non_streaming(up: UpstreamServer, http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat("my-model"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "my-model"
    assert body["id"] and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": answer_text("my-model")}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 20, "total_tokens": 26}
    assert (
        http.post("/chat/completions", json=chat("chunks@2")).json()["usage"]["completion_tokens"]
        == 2
    )


def test_it_streams_openai_framing(up: UpstreamServer, http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json=chat("chunks@5", True)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 6  # 5 content chunks and the finish chunk; no usage chunk
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer_text(
        "chunks@5"
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert up.wait_stats(completed_streams=1, open_streams=0)["client_disconnects"] == 0


def test_openai_client_non_streaming(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="chunks@5", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_openai_client_streaming_with_include_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chunks@5",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_no_usage_omits_usage_everywhere(http: httpx.Client) -> None:
    body = http.post("/v1/chat/completions", json=chat("no-usage")).json()
    assert "usage" not in body
    extra = {"stream_options": {"include_usage": True}}
    raw = http.post("/v1/chat/completions", json=chat("no-usage+chunks@2", True, **extra)).text
    assert '"usage"' not in raw
    assert sse_data(raw)[-1] == "[DONE]"


def test_first_delays_the_headers(http: httpx.Client) -> None:
    start = time.monotonic()
    with http.stream("POST", "/v1/chat/completions", json=chat("first@300+chunks@1", True)) as r:
        assert time.monotonic() - start >= 0.3
        r.read()


@pytest.mark.parametrize("stream", [False, True])
def test_fault_5xx_is_a_json_error_before_any_stream(http: httpx.Client, stream: bool) -> None:
    r = http.post("/v1/chat/completions", json=chat("fault-5xx", stream))
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["message"] == "upstream exploded"
    assert r.json()["error"]["type"] == "server_error"


def test_openai_client_sees_4xx_and_5xx(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fault-5xx", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fault-4xx", messages=MESSAGES)  # type: ignore[arg-type]


def test_fault_429_carries_retry_after(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fault-429", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.status_code == 429


def test_fault_reset_drops_the_stream_after_n_chunks(
    up: UpstreamServer, http: httpx.Client
) -> None:
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=chat("fault-reset@3", True)) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                received.append(line)
    assert len(received) == 3
    assert all(json.loads(d[6:])["choices"][0]["finish_reason"] is None for d in received)
    assert up.stats()["client_disconnects"] == 0  # the server hung up, not the client


def test_fault_reset_with_the_openai_client(client: OpenAI) -> None:
    texts: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        stream = client.chat.completions.create(
            model="fault-reset@3",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "tok0 tok1 tok2 "


def test_fault_reset_without_stream_sends_no_response(http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=chat("fault-reset"))


def test_fault_inband_error(http: httpx.Client, client: OpenAI) -> None:
    r = http.post("/v1/chat/completions", json=chat("fault-inband-error", True))
    assert r.status_code == 200
    data = sse_data(r.text)
    assert len(data) == 3
    assert json.loads(data[-1]) == {
        "error": {"message": "in-band failure", "type": "server_error", "param": None, "code": None}
    }
    assert "[DONE]" not in r.text
    with pytest.raises(openai.APIError, match="in-band failure"):
        for _ in client.chat.completions.create(
            model="fault-inband-error",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ):
            pass


def test_fault_hang_sends_no_headers(up: UpstreamServer, http: httpx.Client) -> None:
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=chat("fault-hang", True), timeout=0.3)
    assert time.monotonic() - start < 2
    stats = up.wait_stats(client_disconnects=1, open_requests=0)
    assert stats["client_disconnects"] == 1
    assert stats["open_requests"] == 0


def test_fault_trickle_beats_the_read_timeout(up: UpstreamServer, http: httpx.Client) -> None:
    timeout = httpx.Timeout(5, read=6)  # above the 4 s byte interval
    got = b""
    start = time.monotonic()
    with http.stream(
        "POST", "/v1/chat/completions", json=chat("fault-trickle", True), timeout=timeout
    ) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            got += piece
            if len(got) >= 2:
                break
    assert got == b"::"
    assert 3.5 < time.monotonic() - start < 6
    stats = up.wait_stats(client_disconnects=1, open_streams=0)
    assert stats["client_disconnects"] == 1
    assert stats["open_streams"] == 0


def test_fault_bad_sse(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/chat/completions", json=chat("fault-bad-sse+chunks@3", True)
    ) as r:
        raw = b"".join(r.iter_raw())
    text = raw.decode("utf-8")  # the split character is whole once joined
    assert BAD_SSE_TEXT in text
    assert "café 🙂".encode() in raw
    assert ": ping\r\n\r\n" in text
    assert "event: foo\r\n" in text
    assert "data: not json\r\n" in text
    assert "\r\n\r\n" in text and "}\n\ndata" in text  # mixed line endings
    data = sse_data(text)
    assert data[-1] == "[DONE]"
    contents = [
        json.loads(d)["choices"][0]["delta"].get("content", "")
        for d in data[:-1]
        if d.startswith("{")
    ]
    assert "".join(contents) == answer_text("fault-bad-sse+chunks@3") == "tok0 café 🙂 tok1 tok2 "


def test_fault_eof_ends_without_done_or_finish_reason(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat("fault-eof+chunks@4", True))
    assert r.status_code == 200
    data = sse_data(r.text)
    assert len(data) == 4
    assert all(json.loads(d)["choices"][0]["finish_reason"] is None for d in data)


def test_fault_redirect(up: UpstreamServer, http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat("fault-redirect@9"))
    assert r.status_code == 302
    assert r.headers["location"] == "http://127.0.0.1:9/"
    r = http.post("/v1/chat/completions", json=chat("fault-redirect-internal"))
    assert r.headers["location"] == f"{up.url}/_internal/secret"
    assert http.get(r.headers["location"]).json() == {"secret": INTERNAL_SECRET}
    assert up.requests()[-1]["path"] == "/_internal/secret"


def test_non_json_faults(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat("fault-html"))
    assert (r.status_code, r.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert r.text == "<html>oops</html>"
    r = http.post("/v1/chat/completions", json=chat("fault-badjson"))
    assert (r.status_code, r.text) == (200, "{not json")
    r = http.post("/v1/chat/completions", json=chat("fault-big@2"))
    assert len(r.content) == 2 * 1024 * 1024
    assert r.json()["choices"][0]["message"]["content"].startswith("xxxx")
    with pytest.raises(httpx.RemoteProtocolError):  # half of the promised body, then EOF
        http.post("/v1/chat/completions", json=chat("fault-eof"))


def test_fault_big_defaults_to_20_mb(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json=chat("fault-big")) as r:
        size = sum(len(piece) for piece in r.iter_raw())
    assert size == 20 * 1024 * 1024


def test_echo_returns_what_the_upstream_received(up: UpstreamServer) -> None:
    with OpenAI(
        base_url=up.url + "/v1", api_key="sk-echo", max_retries=0, default_headers={"X-Trace": "t1"}
    ) as oai:
        completion = oai.chat.completions.create(
            model="echo",
            messages=MESSAGES,  # type: ignore[arg-type]
            temperature=0.5,
        )
    seen = json.loads(completion.choices[0].message.content or "")
    assert seen["headers"]["authorization"] == "[credential]"  # masked in the answer
    assert up.requests()[-1]["headers"]["authorization"] == "Bearer sk-echo"
    assert seen["headers"]["x-trace"] == "t1"
    assert seen["body"]["temperature"] == 0.5
    assert seen["body"]["messages"] == MESSAGES


def test_it_records_requests(up: UpstreamServer, http: httpx.Client) -> None:
    http.get("/health")
    http.post("/v1/chat/completions?x=1", json=chat("a"), headers={"X-Custom": "v"})
    recorded = http.get("/_requests").json()
    assert [r["path"] for r in recorded] == ["/health", "/v1/chat/completions"]
    assert recorded[-1]["headers"]["x-custom"] == "v"
    assert recorded[-1]["body"]["model"] == "a"
    assert recorded[-1]["query"] == "x=1"
    assert up.requests() == recorded
    assert http.get("/_stats").json()["requests"] == 2
    assert http.post("/_reset").status_code == 200
    assert http.get("/_requests").json() == []
    assert up.stats()["requests"] == 0


def test_it_keeps_only_the_last_records() -> None:
    with UpstreamServer(max_records=3) as small, httpx.Client(base_url=small.url) as http:
        for i in range(5):
            http.post("/v1/chat/completions", json=chat(f"m{i}"))
        assert [r["body"]["model"] for r in small.requests()] == ["m2", "m3", "m4"]
        assert small.stats()["requests"] == 5


def test_health_and_models(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/health/503").status_code == 503
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    assert http.get("/nowhere").status_code == 404


def test_it_detects_a_client_disconnect_mid_stream(up: UpstreamServer, http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json=chat("delay@50", True)) as r:
        lines = r.iter_lines()  # keep a reference: an abandoned iterator closes the response
        got: list[str] = []
        while len(got) < 2:
            line = next(lines)
            if line.startswith("data: "):
                got.append(line)
        assert up.stats()["open_streams"] == 1
        assert up.stats()["client_disconnects"] == 0
    closed = time.monotonic()
    stats = up.wait_stats(timeout=1.0, client_disconnects=1, open_streams=0)
    assert time.monotonic() - closed < 1
    assert stats["client_disconnects"] == 1
    assert stats["open_streams"] == 0
    assert stats["completed_streams"] == 0


def test_it_detects_a_client_disconnect_during_a_non_stream_call(
    up: UpstreamServer, http: httpx.Client
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=chat("delay@100"), timeout=0.3)
    assert up.wait_stats(client_disconnects=1, open_requests=0)["client_disconnects"] == 1


def test_stop_is_prompt_with_hanging_requests() -> None:
    up = UpstreamServer().start()
    http = httpx.Client(base_url=up.url, timeout=5)
    with http.stream("POST", "/v1/chat/completions", json=chat("fault-trickle", True)) as r:
        next(r.iter_raw())
        start = time.monotonic()
        up.stop()
        assert time.monotonic() - start < 2
    http.close()


def test_subprocess_mode() -> None:
    proc, url = start_subprocess()
    try:
        assert httpx.get(url + "/health").status_code == 200
        r = httpx.post(url + "/v1/chat/completions", json=chat("chunks@2"))
        assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
        assert httpx.get(url + "/_stats").json()["requests"] == 2
    finally:
        start = time.monotonic()
        stop_subprocess(proc)
        assert time.monotonic() - start < 5
    assert proc.returncode is not None


def test_stats_keep_the_peak_of_concurrent_requests(up: UpstreamServer) -> None:
    import concurrent.futures

    def call(_: int) -> int:
        return httpx.post(
            up.url + "/v1/chat/completions", json=chat("chunks@1+delay@300"), timeout=5
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(4))) == [200] * 4
    stats = up.stats()
    assert stats["peak_open_requests"] == 4 and stats["open_requests"] == 0
    up.reset()
    assert up.stats()["peak_open_requests"] == 0  # restarts from the requests open now
