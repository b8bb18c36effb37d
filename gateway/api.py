"""JSON API handlers of the gateway: chat completions in both framings (api-contract.md §8)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from gateway import chat, sessions
from orgs.auth import Caller
from orgs.errors import InvalidRequest, ServiceError
from orgs.jsonapi import json_response, read_json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _stream_response(body: Any, headers: dict[str, str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    for name, value in {**SSE_HEADERS, **headers}.items():
        response[name] = value
    return response


async def chat_completions(request: HttpRequest, caller: Caller) -> HttpResponse | dict[str, Any]:
    """POST /chat/completions: JSON, or OpenAI SSE with `"stream": true`."""
    body = read_json(request)
    call = None
    try:
        call = await chat.prepare(caller, body, endpoint="chat.completions")
        if not call.stream:
            data = await chat.complete(call)
            return json_response(data, headers=call.response_headers())
        upstream_response = await chat.open_upstream(call)
    except ServiceError as exc:
        _record_refusal(caller, body, call, "chat.completions", exc)
        raise
    return _stream_response(chat.openai_events(call, upstream_response), call.response_headers())


def _record_refusal(
    caller: Caller, body: Any, call: chat.ChatCall | None, endpoint: str, exc: ServiceError
) -> None:
    """Usage rows for rate-limited and failed upstream calls (not for invalid requests)."""
    if exc.status < 429:
        return
    if call is None:
        chat.record_failure(caller, body, endpoint=endpoint, error=exc)
    else:
        chat.record_usage(call, status=exc.status, error=exc.message)


def _last_chunk_index(request: HttpRequest) -> int | None:
    raw = request.headers.get("x-last-chunk-index")
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidRequest(
            "x-last-chunk-index must be an integer >= -1", param="x-last-chunk-index"
        ) from None
    if value < -1:
        raise InvalidRequest(
            "x-last-chunk-index must be an integer >= -1", param="x-last-chunk-index"
        )
    return value


async def chat_completions_stream(request: HttpRequest, caller: Caller) -> HttpResponse:
    """POST /chat/completions/stream: the oRPC event framing, with caching and resumption."""
    after = _last_chunk_index(request)
    body = read_json(request)
    call = None
    try:
        # Resolution runs for every request, so a revoked key or grant stops cached answers,
        # and the session key names the route, so an edited model is never answered from cache.
        call = await chat.prepare(caller, body, endpoint="chat.stream", acquire_limits=False)
        key = sessions.session_key(caller.org.pk, caller.on_behalf_of, body, call.route)
        session = sessions.find(key)
        if session is not None:
            chat.record_usage(call, status=200, cached=True)
        else:
            await chat.acquire_limits_for(call)
            upstream_response = await chat.open_upstream(call)
            session = sessions.start(key, lambda: chat.orpc_chunks(call, upstream_response))
    except ServiceError as exc:
        _record_refusal(caller, body, call, "chat.stream", exc)
        raise
    return _stream_response(
        session.consume(-1 if after is None else after), call.response_headers()
    )
