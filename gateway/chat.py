"""Chat completions through the registry to real upstreams (api-contract.md §8).

`prepare` validates a request and resolves its route (auto, aliases, grants, reroute rules,
context window, rate limits); `open_upstream` makes the call, falling back on `error-fallback`;
`complete` answers a non-streaming request; `openai_events` and `orpc_events` re-frame an
upstream OpenAI SSE stream as the two framings the API speaks, forwarding chunks as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gateway import limits, usage
from gateway.schemas import ChatRequest, estimate_tokens, parse_chat_request, prompt_chars
from orgs.auth import Caller
from orgs.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from registry import upstream
from registry.resolve import Route, RouteError, aresolve_route

logger = logging.getLogger(__name__)

CHAT_FORMATS = frozenset({"completions", "responses"})
MAX_UPSTREAM_BODY = 10 * 1024 * 1024
MAX_SSE_LINE = 4 * 1024 * 1024
KEEPALIVE_SECONDS = 15.0
_KEY_RE = re.compile(r"(sk|mk|pk|rk)[-_][A-Za-z0-9_\-]{6,}")
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    return _DUMPS(value)


@dataclass
class ChatCall:
    caller: Caller
    request: ChatRequest
    body: dict[str, Any]
    route: Route
    endpoint: str  # "chat.completions" or "chat.stream"
    stream: bool
    prompt_chars: int
    user: str | None = None
    rerouted_from: str = ""
    reroute_reason: str = ""
    started: float = field(default_factory=time.perf_counter)

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options") or {}
        return bool(options.get("include_usage"))

    def response_headers(self) -> dict[str, str]:
        headers = {"x-gateway-model": self.route.model_id}
        if self.rerouted_from:
            headers["x-gateway-rerouted-from"] = self.rerouted_from
            headers["x-gateway-reroute-reason"] = self.reroute_reason
        return headers


# ---------------------------------------------------------------------------------------------
# Preparing a call


async def _route(caller: Caller, name: str) -> Route:
    try:
        return await aresolve_route(caller.org, name, "completions")
    except RouteError as exc:
        if exc.kind == "not_found":
            raise NotFound(exc.message, param="model") from None
        raise InvalidRequest(exc.message, param="model") from None


def _has_modality(messages: list[dict[str, Any]], modality: str) -> bool:
    part_types = {"image": "image_url", "audio": "input_audio", "video": "video_url"}
    wanted = part_types.get(modality)
    if wanted is None:  # text
        return any(isinstance(m.get("content"), str) for m in messages)
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == wanted for p in content
        ):
            return True
    return False


def _has_base64(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url" and str(
                (part.get("image_url") or {}).get("url", "")
            ).startswith("data:"):
                return True
            if part.get("type") in ("input_audio", "file") and (
                (part.get("input_audio") or {}).get("data")
                or (part.get("file") or {}).get("file_data")
            ):
                return True
    return False


def _fits(route: Route, chars: int, max_tokens: int | None) -> bool:
    window = route.context_window
    if not window:
        return True
    # A lower bound of the prompt's size (six characters a token): refuse only what plainly
    # cannot fit, and leave borderline prompts to the upstream.
    return chars // 6 + (max_tokens or 0) <= window


async def _reroute(call: ChatCall) -> None:
    """Apply the first matching reroute rule of the resolved model (one hop)."""
    messages = call.body["messages"]
    for rule in call.route.reroute_rules:
        trigger = rule["trigger"]
        kind = trigger["type"]
        matched = (
            (kind == "input-modality" and _has_modality(messages, trigger["modality"]))
            or (kind == "base64-input" and _has_base64(messages))
            or (
                kind == "context-exceeded"
                and not _fits(call.route, call.prompt_chars, call.request.max_tokens)
            )
        )
        if matched:
            target = await _route(call.caller, rule["targetModelId"])
            call.rerouted_from, call.reroute_reason = call.route.model_id, kind
            call.route = target
            return


async def _preflight(call: ChatCall) -> None:
    """A `preflight` model is probed (cached for cacheTtlSeconds) before it is used; when it is
    down the request goes to its error-fallback target, or fails with 503."""
    from registry import health

    hc = call.route.health_check or {}
    if hc.get("mode") != "preflight" or await health.apreflight(call.route):
        return
    target = _fallback_target(call.route)
    if target is None:
        raise ServiceUnavailable(
            f"model {call.route.model_id!r} is unavailable (health check failed)"
        )
    call.rerouted_from, call.reroute_reason = call.route.model_id, "error-fallback"
    call.route = await _route(call.caller, target)


async def prepare(
    caller: Caller,
    body: Any,
    *,
    endpoint: str,
    user: str | None = None,
    acquire_limits: bool = True,
) -> ChatCall:
    request = parse_chat_request(body)
    route = await _route(caller, request.model)
    if route.api_format not in CHAT_FORMATS:
        raise InvalidRequest(
            f"model {route.model_id!r} serves {route.api_format}, not chat completions",
            param="model",
        )
    stream = endpoint == "chat.stream" or bool(request.stream)
    call = ChatCall(
        caller=caller,
        request=request,
        body=body,
        route=route,
        endpoint=endpoint,
        stream=stream,
        prompt_chars=prompt_chars(body["messages"]),
        user=user,
    )
    if route.reroute_rules:
        await _reroute(call)
    await _preflight(call)
    if not _fits(call.route, call.prompt_chars, request.max_tokens):
        raise InvalidRequest(
            f"the prompt (about {estimate_tokens(call.prompt_chars)} tokens) plus max_tokens "
            f"does not fit the context window of {call.route.model_id} "
            f"({call.route.context_window} tokens)",
            param="messages",
        )
    if acquire_limits:
        await acquire_limits_for(call)
    return call


async def acquire_limits_for(call: ChatCall) -> None:
    await limits.acquire(limits.limits_for(call.route, call.caller, call.user))


# ---------------------------------------------------------------------------------------------
# Calling the upstream


def upstream_body(call: ChatCall, route: Route) -> bytes:
    body = dict(call.body)
    body["model"] = route.upstream_model
    body.pop("auto_routing", None)
    defaults = route.default_params
    for ours, theirs in (
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
    ):
        if ours in defaults and body.get(theirs) is None:
            body[theirs] = defaults[ours]
    if call.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    if body.get("reasoning_effort", 0) is None:
        del body["reasoning_effort"]
    return dumps(body).encode()


def _scrub(text: str, route: Route) -> str:
    text = _KEY_RE.sub("[redacted]", text)
    for secret in upstream.secret_values(route.auth):
        text = text.replace(secret, "[redacted]")
    return text[:500]


async def _error_for_status(response: upstream.UpstreamResponse, route: Route) -> ServiceError:
    status = response.status_code
    detail = ""
    try:
        raw = await response.read(64 * 1024)
        parsed = json.loads(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            detail = str(parsed["error"].get("message") or "")
        elif isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            detail = parsed["error"]
    except (upstream.UpstreamCallError, ValueError):
        pass
    finally:
        await response.aclose()
    detail = _scrub(detail, route) if detail else ""
    suffix = f": {detail}" if detail and status not in (401, 403) else ""
    if status == 429:
        retry = response.headers.get("retry-after", "")
        headers = {"Retry-After": retry} if retry.isdigit() else {"Retry-After": "1"}
        return RateLimited(f"the upstream is rate limiting requests{suffix}", headers=headers)
    if status in (400, 404, 413, 422):
        return InvalidRequest(f"the upstream refused the request (HTTP {status}){suffix}")
    if status in (401, 403):
        return UpstreamFailed(f"the upstream refused the gateway's credentials (HTTP {status})")
    if status == 504:
        return UpstreamTimeout(f"the upstream timed out (HTTP {status})")
    return UpstreamFailed(f"the upstream failed (HTTP {status}){suffix}")


def _request_headers(route: Route) -> dict[str, str]:
    try:
        headers = upstream.build_auth_headers(route.auth)
    except upstream.UpstreamAuthError as exc:
        raise UpstreamFailed(f"the model's credentials are not configured: {exc}") from None
    headers["content-type"] = "application/json"
    headers["accept"] = "application/json"
    return headers


async def _open(call: ChatCall, route: Route) -> upstream.UpstreamResponse:
    if not route.base_url:
        raise UpstreamFailed(f"model {route.model_id!r} has no baseUrl to call")
    headers = _request_headers(route)
    if call.stream:
        headers["accept"] = "text/event-stream"
    timeout = route.definition.get("requestTimeoutMs")
    try:
        response = await upstream.send(
            route.base_url.rstrip("/") + "/chat/completions",
            content=upstream_body(call, route),
            headers=headers,
            trusted=route.trusted,
            read_timeout=timeout / 1000 if timeout else None,
        )
    except upstream.UpstreamCallError as exc:
        if exc.kind == "timeout":
            raise UpstreamTimeout(exc.message) from None
        raise UpstreamFailed(exc.message) from None
    if response.status_code >= 300:
        raise await _error_for_status(response, route)
    return response


def _read_timeout(route: Route) -> float:
    timeout_ms = route.definition.get("requestTimeoutMs")
    return timeout_ms / 1000 if timeout_ms else float(settings.UPSTREAM_READ_TIMEOUT)


def _fallback_target(route: Route) -> str | None:
    for rule in route.reroute_rules:
        if rule["trigger"]["type"] == "error-fallback":
            return rule["targetModelId"]
    return None


async def open_upstream(call: ChatCall) -> upstream.UpstreamResponse:
    """Call the route's upstream; on failure before the first byte, try its error-fallback."""
    try:
        return await _open(call, call.route)
    except (UpstreamFailed, UpstreamTimeout, RateLimited) as exc:
        target = _fallback_target(call.route)
        if target is None:
            raise
        logger.warning(
            "upstream of %s failed (%s); falling back to %s",
            call.route.model_id,
            exc.message,
            target,
        )
        fallback = await _route(call.caller, target)
        call.rerouted_from, call.reroute_reason = call.route.model_id, "error-fallback"
        call.route = fallback
        return await _open(call, fallback)


# ---------------------------------------------------------------------------------------------
# Usage


def record_usage(
    call: ChatCall,
    *,
    status: int,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    ttft: float | None = None,
    error: str = "",
    cached: bool = False,
) -> None:
    usage.record(
        org_id=call.caller.org.pk,
        api_key_id=call.caller.api_key_id,
        end_user=call.caller.on_behalf_of or "",
        endpoint=call.endpoint,
        requested_model=call.request.model,
        model_id=call.route.model_id,
        rerouted_from=call.rerouted_from,
        reroute_reason=call.reroute_reason,
        stream=call.stream,
        status_code=status,
        error=error[:500],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        latency_ms=int((time.perf_counter() - call.started) * 1000),
        ttft_ms=None if ttft is None else int((ttft - call.started) * 1000),
        cached=cached,
    )


def record_failure(caller: Caller, body: Any, *, endpoint: str, error: ServiceError) -> None:
    """A usage row for a request refused before it reached an upstream (429s, upstream errors)."""
    model = body.get("model") if isinstance(body, dict) else None
    usage.record(
        org_id=caller.org.pk,
        api_key_id=caller.api_key_id,
        end_user=caller.on_behalf_of or "",
        endpoint=endpoint,
        requested_model=str(model or "")[:256],
        model_id="",
        stream=False,
        status_code=error.status,
        error=error.message[:500],
    )


# ---------------------------------------------------------------------------------------------
# Non-streaming


def _completion_chars(choices: list[Any]) -> int:
    total = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") or choice.get("delta") or {}
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if isinstance(reasoning, str):
            total += len(reasoning)
        for tool_call in message.get("tool_calls") or []:
            if isinstance(tool_call, dict):
                total += len(str((tool_call.get("function") or {}).get("arguments") or ""))
    return total


def _valid_usage(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(k), int) for k in ("prompt_tokens", "completion_tokens")
    )


async def complete(call: ChatCall) -> dict[str, Any]:
    response = await open_upstream(call)
    try:
        # The body follows the headers: it must arrive whole within one read timeout, so an
        # upstream trickling bytes cannot hold the request open forever.
        raw = await asyncio.wait_for(response.read(MAX_UPSTREAM_BODY), _read_timeout(call.route))
    except TimeoutError:
        raise UpstreamTimeout("the upstream did not send its whole answer in time") from None
    except upstream.UpstreamCallError as exc:
        if exc.kind == "timeout":
            raise UpstreamTimeout(exc.message) from None
        raise UpstreamFailed(exc.message) from None
    finally:
        await response.aclose()
    try:
        data = json.loads(raw)
    except ValueError:
        raise UpstreamFailed("the upstream returned a response that is not JSON") from None
    if not isinstance(data, dict) or "error" in data or not isinstance(data.get("choices"), list):
        message = ""
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = ": " + _scrub(str(data["error"].get("message") or ""), call.route)
        raise UpstreamFailed(f"the upstream returned an error instead of a completion{message}")
    data["model"] = call.route.model_id
    data.setdefault("object", "chat.completion")
    data.setdefault("id", f"chatcmpl-{uuid.uuid4().hex[:24]}")
    data.setdefault("created", int(time.time()))
    for index, choice in enumerate(data["choices"]):
        if not isinstance(choice, dict):
            raise UpstreamFailed("the upstream returned a malformed completion")
        choice.setdefault("index", index)
        choice.setdefault("finish_reason", None)
        message = choice.setdefault("message", {"role": "assistant"})
        if isinstance(message, dict):
            message.setdefault("content", None)
            message.setdefault("role", "assistant")
    if not _valid_usage(data.get("usage")):
        prompt = estimate_tokens(call.prompt_chars)
        completion = estimate_tokens(_completion_chars(data["choices"]))
        data["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    usage_data = data["usage"]
    usage_data.setdefault(
        "total_tokens", usage_data["prompt_tokens"] + usage_data["completion_tokens"]
    )
    record_usage(
        call,
        status=200,
        prompt_tokens=usage_data["prompt_tokens"],
        completion_tokens=usage_data["completion_tokens"],
    )
    return data


# ---------------------------------------------------------------------------------------------
# Streaming: parsing the upstream's SSE


class UpstreamStreamError(Exception):
    pass


KEEPALIVE = object()


async def sse_payloads(response: upstream.UpstreamResponse) -> AsyncIterator[Any]:
    """The `data` payloads of an upstream SSE stream (str), or KEEPALIVE while it is silent.

    Lines may end in LF, CRLF or CR; events end at a blank line; comments and other fields are
    ignored. Bytes are split only at line ends, so a UTF-8 character split across network reads
    is decoded whole. Raises UpstreamStreamError when the upstream fails or goes idle too long.
    """
    idle_limit = float(settings.UPSTREAM_READ_TIMEOUT)
    chunks = response.iter_bytes().__aiter__()
    buffer = b""
    data_lines: list[bytes] = []
    last_event = time.monotonic()
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait((pending,), timeout=KEEPALIVE_SECONDS)
            if not done:
                if time.monotonic() - last_event > idle_limit:
                    raise UpstreamStreamError("the upstream stopped sending data")
                yield KEEPALIVE
                continue
            try:
                data = pending.result()
            except StopAsyncIteration:
                break
            except upstream.UpstreamCallError as exc:
                raise UpstreamStreamError(exc.message) from None
            finally:
                pending = None
            buffer += data
            if len(buffer) > MAX_SSE_LINE:
                raise UpstreamStreamError(
                    "the upstream sent a line longer than the gateway accepts"
                )
            if b"\r" in buffer:
                if buffer.endswith(b"\r"):  # maybe the first half of CRLF: wait for more
                    buffer, held = buffer[:-1], b"\r"
                else:
                    held = b""
                buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line:
                    if data_lines:
                        last_event = time.monotonic()
                        yield b"\n".join(data_lines).decode("utf-8", errors="replace")
                        data_lines = []
                elif line.startswith(b"data:"):
                    value = line[5:]
                    data_lines.append(value[1:] if value.startswith(b" ") else value)
            if time.monotonic() - last_event > idle_limit:
                raise UpstreamStreamError("the upstream stopped sending events")
        if data_lines:
            yield b"\n".join(data_lines).decode("utf-8", errors="replace")
    finally:
        if pending is not None:
            pending.cancel()


@dataclass
class StreamState:
    """What a stream has produced so far: for usage and for a well-formed ending."""

    completion_chars: int = 0
    usage: dict[str, Any] | None = None
    finished: bool = False  # a chunk carried a finish_reason
    done: bool = False  # [DONE] arrived
    chunk_id: str = ""
    created: int = 0
    first_chunk_at: float | None = None

    def record_usage(self, call: ChatCall, *, status: int, error: str) -> None:
        """The stream's usage row, however it ended."""
        totals = self.final_usage(call)
        record_usage(
            call,
            status=status,
            prompt_tokens=totals["prompt_tokens"],
            completion_tokens=totals["completion_tokens"],
            ttft=self.first_chunk_at,
            error=error,
        )

    def final_usage(self, call: ChatCall) -> dict[str, int]:
        if _valid_usage(self.usage):
            assert self.usage is not None
            prompt = self.usage["prompt_tokens"]
            completion = self.usage["completion_tokens"]
        else:
            prompt = estimate_tokens(call.prompt_chars)
            completion = estimate_tokens(self.completion_chars) if self.completion_chars else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


async def _drain(payloads: AsyncIterator[Any]) -> None:
    """Read what follows [DONE] (normally just the end of the body) so that the connection can
    go back to the pool; give up after a moment if the upstream keeps it open."""
    with contextlib.suppress(TimeoutError, UpstreamStreamError):
        async with asyncio.timeout(1.0):
            async for _ in payloads:
                pass


async def upstream_chunks(
    call: ChatCall, response: upstream.UpstreamResponse, state: StreamState
) -> AsyncIterator[Any]:
    """Normalised chunk dicts of the upstream stream (model set to the resolved id), or
    KEEPALIVE. Raises UpstreamStreamError on failure, in-band errors and early ends."""
    model_id = call.route.model_id
    payloads = sse_payloads(response).__aiter__()
    try:
        async for payload in payloads:
            if payload is KEEPALIVE:
                yield KEEPALIVE
                continue
            if payload.strip() == "[DONE]":
                state.done = True
                await _drain(payloads)
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                logger.warning("skipping a non-JSON event from the upstream of %s", model_id)
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise UpstreamStreamError(
                    "the upstream reported an error: "
                    + _scrub(str(message or "unknown error"), call.route)
                )
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                continue
            chunk["model"] = model_id
            chunk["object"] = "chat.completion.chunk"
            if not state.chunk_id:
                state.chunk_id = str(chunk.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}")
                state.created = int(chunk.get("created") or time.time())
            chunk.setdefault("id", state.chunk_id)
            chunk.setdefault("created", state.created)
            for index, choice in enumerate(choices):
                if not isinstance(choice, dict):
                    continue
                choice.setdefault("index", index)
                choice.setdefault("finish_reason", None)
                delta = choice.setdefault("delta", {})
                if choice["finish_reason"] is not None:
                    state.finished = True
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str):
                        state.completion_chars += len(content)
                    reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                    if isinstance(reasoning, str):
                        state.completion_chars += len(reasoning)
                    for tool_call in delta.get("tool_calls") or []:
                        if isinstance(tool_call, dict):
                            state.completion_chars += len(
                                str((tool_call.get("function") or {}).get("arguments") or "")
                            )
            if _valid_usage(chunk.get("usage")):
                state.usage = chunk["usage"]
            if state.first_chunk_at is None and choices:
                state.first_chunk_at = time.perf_counter()
            yield chunk
    finally:
        await response.aclose()
    if not state.done and not state.finished:
        raise UpstreamStreamError("the upstream closed the stream before it finished")


# ---------------------------------------------------------------------------------------------
# Streaming: the two framings


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "upstream_error", "param": None, "code": 502}}


async def openai_events(
    call: ChatCall, response: upstream.UpstreamResponse
) -> AsyncIterator[bytes]:
    """OpenAI SSE (§8.3): `data: {chunk}` frames, `data: [DONE]`; an error frame on failure."""
    state = StreamState()
    include_usage = call.include_usage
    sent_usage = False
    status, error = 200, ""
    try:
        async for chunk in upstream_chunks(call, response, state):
            if chunk is KEEPALIVE:
                yield b": keep-alive\n\n"
                continue
            if not chunk["choices"]:  # a usage-only chunk
                if not include_usage:
                    continue
                sent_usage = True
            elif not include_usage and "usage" in chunk:
                del chunk["usage"]
            yield b"data: " + dumps(chunk).encode() + b"\n\n"
        if include_usage and not sent_usage:
            final = {
                "id": state.chunk_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion.chunk",
                "created": state.created or int(time.time()),
                "model": call.route.model_id,
                "choices": [],
                "usage": state.final_usage(call),
            }
            yield b"data: " + dumps(final).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    except UpstreamStreamError as exc:
        status, error = 502, str(exc)
        yield b"data: " + dumps(_error_body(str(exc))).encode() + b"\n\n"
    except BaseException:  # the client went away (cancelled): the upstream is closed above
        status, error = 499, "client closed the connection"
        raise
    finally:
        state.record_usage(call, status=status, error=error)


def orpc_message(index: int, chunk: dict[str, Any]) -> bytes:
    return (
        b"event: message\nid: "
        + str(index).encode()
        + b"\ndata: "
        + dumps(chunk).encode()
        + b"\n\n"
    )


ORPC_DONE = b"event: done\ndata: null\n\n"
ORPC_KEEPALIVE = b": keep-alive\n\n"


def orpc_error(message: str) -> bytes:
    return b"event: error\ndata: " + dumps(message).encode() + b"\n\n"


async def orpc_chunks(call: ChatCall, response: upstream.UpstreamResponse) -> AsyncIterator[Any]:
    """The chunks of the oRPC framing (§8.4), as dicts, with `usage` on the final chunk;
    KEEPALIVE while the upstream is silent. Raises UpstreamStreamError on failure."""
    state = StreamState()
    held: dict[str, Any] | None = None  # the finishing chunk waits for the usage
    status, error = 200, ""
    try:
        async for chunk in upstream_chunks(call, response, state):
            if chunk is KEEPALIVE:
                yield KEEPALIVE
                continue
            if not chunk["choices"]:
                continue  # usage-only: merged into the final chunk below
            chunk.pop("usage", None)
            if held is not None:
                yield held
                held = None
            if any(isinstance(c, dict) and c.get("finish_reason") for c in chunk["choices"]):
                held = chunk
            else:
                yield chunk
        final = held or {
            "id": state.chunk_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": state.created or int(time.time()),
            "model": call.route.model_id,
            "choices": [],
        }
        final["usage"] = state.final_usage(call)
        yield final
    except UpstreamStreamError as exc:
        status, error = 502, str(exc)
        raise
    except BaseException:
        status, error = 499, "cancelled"
        raise
    finally:
        state.record_usage(call, status=status, error=error)
