"""The playground: chat with the org's models through the gateway service, as the API would.

POST (the prompt, the settings, and the conversation so far, which the page keeps as hidden
`msg` fields) stores the chat request of each model in the cache under a random token and
returns the new turn. Each answer in it opens an EventSource on GET `.../stream/<token>`: an
async view that runs `chat.prepare` / `open_upstream` / `orpc_chunks` with the signed-in user as
the caller (never HTTP to ourselves) and sends every token as an SSE event of escaped HTML.
Stop closes the EventSource; the ASGI handler then cancels the view, which closes the upstream.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.forms.utils import flatatt
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import conditional_escape, format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_http_methods
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import reswap, retarget

from dashboard.views.access import HtmxHttpRequest, OrgAccess, get_org_for_user, wants_fragment
from gateway import chat
from gateway.chat import CHAT_FORMATS
from orgs import generation, hotcache
from orgs.auth import Caller
from orgs.errors import ServiceError
from registry.resolve import RouteError, resolve_route, visible_summaries

logger = logging.getLogger(__name__)

TEMPLATE = "gateway/playground.html"
# Recorded in usage as the oRPC stream, the framing whose chunks the playground reads.
ENDPOINT = "chat.stream"
PENDING_SECONDS = 300  # a turn's stream must be opened within this time
LANES = ("a", "b")
MAX_MESSAGE = 100_000
MAX_SYSTEM = 20_000
MAX_HISTORY_MESSAGES = 400
MAX_HISTORY_CHARS = 1_000_000
MAX_INT32 = 2**31 - 1
KEEPALIVE_FRAME = b": keep-alive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_STATUS_LABELS = {
    400: "Invalid request",
    403: "Not allowed",
    404: "Model not found",
    413: "Too large",
    429: "Rate limited",
    502: "Upstream failed",
    503: "Unavailable",
    504: "Upstream timed out",
}


# ---------------------------------------------------------------------------------------------
# The form and the conversation


def chat_model_choices(access: OrgAccess) -> list[tuple[str, str]]:
    """`auto` and every chat model the org can use (hidden ones are left out, as in listings)."""
    choices = [("auto", "auto (the org's default chat model)")]
    for entry in visible_summaries(access.org):
        if entry.api_format not in CHAT_FORMATS or entry.hidden:
            continue
        name = entry.display_name
        choices.append((entry.id, f"{entry.id} · {name}" if name else entry.id))
    return choices


def default_model(access: OrgAccess, models: list[tuple[str, str]]) -> str:
    """`auto` when the org has a working one, else the first model."""
    try:
        resolve_route(access.org, "auto")
    except RouteError:
        return models[1][0] if len(models) > 1 else "auto"
    return "auto"


class ModelSelect(forms.Select):
    """A select with the markup of Django's, whose <option>s are joined from values and labels
    escaped once per request (`option_tags`, shared by both lanes) instead of a template render
    per option: with hundreds of models that render is most of the page's time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option_tags: list[tuple[str, SafeString, SafeString]] = []

    def optgroups(self, name: str, value: Any, attrs: dict[str, Any] | None = None) -> list:
        return []  # render() joins `option_tags` instead

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        widget = self.get_context(name, value, attrs)["widget"]
        values = self.format_value(value)
        chosen: list[str] = []  # Django selects only the first matching option

        def selected(raw: str) -> str:
            if not chosen and raw in values:
                chosen.append(raw)
                return " selected"
            return ""

        options = format_html_join(
            "",
            '\n  <option value="{}"{}>{}</option>\n',
            ((v, selected(raw), label) for raw, v, label in self.option_tags),
        )
        return format_html(
            '<select name="{}"{}>{}\n</select>', widget["name"], flatatt(widget["attrs"]), options
        )


def option_tags(choices: list[tuple[str, str]]) -> list[tuple[str, SafeString, SafeString]]:
    """(value, escaped value, escaped label) of each choice."""
    return [(str(v), conditional_escape(str(v)), conditional_escape(label)) for v, label in choices]


class PlaygroundForm(forms.Form):
    model = forms.ChoiceField(label="Model", widget=ModelSelect)
    compare = forms.BooleanField(required=False, label="Compare with a second model")
    model_b = forms.ChoiceField(required=False, label="Second model", widget=ModelSelect)
    system = forms.CharField(
        required=False,
        max_length=MAX_SYSTEM,
        label="System prompt",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "Optional"}),
    )
    temperature = forms.FloatField(
        required=False,
        min_value=0,
        max_value=2,
        widget=forms.NumberInput(attrs={"step": "0.1", "placeholder": "default"}),
    )
    top_p = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Top p",
        widget=forms.NumberInput(attrs={"step": "0.05", "placeholder": "default"}),
    )
    max_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_INT32,
        label="Max tokens",
        widget=forms.NumberInput(attrs={"placeholder": "default"}),
    )
    message = forms.CharField(
        max_length=MAX_MESSAGE,
        label="Message",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Type a message…"}),
    )

    def __init__(self, *args: Any, models: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = models
        self.fields["model_b"].choices = [("", "—"), *models]
        tags = option_tags(models)  # escaped once, for both selects
        model_widget = self.fields["model"].widget
        model_b_widget = self.fields["model_b"].widget
        assert isinstance(model_widget, ModelSelect) and isinstance(model_b_widget, ModelSelect)
        model_widget.option_tags = tags
        model_b_widget.option_tags = [*option_tags([("", "—")]), *tags]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("compare") and not data.get("model_b"):
            self.add_error("model_b", "Pick the model to compare with.")
        return data

    def settings_initial(self) -> dict[str, Any]:
        """The settings just used, for the form after a send (the message box starts empty)."""
        return {k: v for k, v in self.cleaned_data.items() if k != "message"}


@dataclass
class Turn:
    user: str
    answers: dict[str, str] = field(default_factory=dict)  # lane → answer


class HistoryError(ValueError):
    pass


def parse_history(raw: list[str]) -> list[Turn]:
    """The conversation posted back by the page: JSON `msg` fields in document order, a user
    message followed by the answer of each lane ({"role", "content", "lane"})."""
    if len(raw) > MAX_HISTORY_MESSAGES:
        raise HistoryError(f"the conversation is longer than {MAX_HISTORY_MESSAGES} messages")
    turns: list[Turn] = []
    size = 0
    for item in raw:
        try:
            data = json.loads(item)
        except ValueError:
            raise HistoryError("a message of the conversation is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise HistoryError("a message of the conversation has no text")
        size += len(data["content"])
        if size > MAX_HISTORY_CHARS:
            raise HistoryError("the conversation is too long")
        role, lane = data.get("role"), data.get("lane", "")
        if role == "user":
            turns.append(Turn(data["content"]))
        elif role == "assistant" and lane in LANES and turns:
            turns[-1].answers[lane] = data["content"]
        else:
            raise HistoryError("a message of the conversation has an unknown role")
    return turns


def lane_messages(turns: list[Turn], lane: str) -> list[dict[str, str]]:
    """The history one model sees. A turn it took no part in (compare was off) carries the other
    model's answer; a turn without any answer (an error, or stopped before the first token) is
    left out, so a failed prompt is not sent again."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        answer = turn.answers.get(lane, next(iter(turn.answers.values()), None))
        if answer is None:
            continue
        messages.append({"role": "user", "content": turn.user})
        messages.append({"role": "assistant", "content": answer})
    return messages


def chat_body(data: dict[str, Any], model: str, history: list[dict[str, str]]) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    if data.get("system"):
        messages.append({"role": "system", "content": data["system"]})
    messages += history
    messages.append({"role": "user", "content": data["message"]})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    for name in ("temperature", "top_p", "max_tokens"):
        if data.get(name) is not None:
            body[name] = data[name]
    return body


# ---------------------------------------------------------------------------------------------
# Pending requests: the GET stream URL carries only a random token


def _pending_key(token: str) -> str:
    return f"dashboard:playground:{token}"


def store_pending(access: OrgAccess, user: Any, body: dict[str, Any], lane: str) -> str:
    token = secrets.token_urlsafe(24)
    pending = {"user": user.pk, "org": access.org.pk, "body": body, "lane": lane}
    cache.set(_pending_key(token), pending, PENDING_SECONDS)
    return token


def claim_pending(request: HtmxHttpRequest, slug: str, token: str) -> tuple[OrgAccess, dict]:
    """The org and the stored request of a stream, once: another user's or org's token, an
    expired one or one already streamed is a 404."""
    access = get_org_for_user(request, slug)
    key = _pending_key(token)
    pending = cache.get(key)
    user: Any = request.user
    if pending is None or pending["user"] != user.pk or pending["org"] != access.org.pk:
        raise Http404("No such answer.")
    if not cache.delete(key):  # a concurrent GET claimed it first
        raise Http404("No such answer.")
    return access, pending


# ---------------------------------------------------------------------------------------------
# The page


@dataclass(frozen=True)
class Lane:
    key: str  # "a" or "b"
    model: str  # as picked: an id or `auto`
    stream_url: str


@dataclass(frozen=True)
class TurnView:
    user: str
    lanes: list[Lane]

    @property
    def user_json(self) -> str:
        return json.dumps({"role": "user", "content": self.user}, ensure_ascii=False)


def _page_context(access: OrgAccess, form: PlaygroundForm, **extra: Any) -> dict[str, Any]:
    return {"access": access, "nav_section": "playground", "form": form, **extra}


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def playground(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET shows the playground; POST sends a message and returns the turn that streams."""
    access = get_org_for_user(request, slug)
    models = chat_model_choices(access)
    if request.method == "GET":
        initial = {"model": default_model(access, models)}
        form = PlaygroundForm(initial=initial, models=models)
        template = TEMPLATE + ("#playground" if wants_fragment(request) else "")
        return render(request, template, _page_context(access, form))

    form = PlaygroundForm(request.POST, models=models)
    turns: list[Turn] = []
    if form.is_valid():
        try:
            turns = parse_history(request.POST.getlist("msg"))
        except HistoryError as exc:
            form.add_error(None, f"The conversation could not be read ({exc}): start a new chat.")
    if not form.is_valid():
        if request.htmx:
            # htmx 2 swaps only 2xx: the form comes back (200) in place of itself, not appended
            # to the transcript.
            response = render(request, TEMPLATE + "#pg-form", _page_context(access, form))
            return reswap(retarget(response, "#pg-form"), "outerHTML")
        return render(request, TEMPLATE, _page_context(access, form))

    data = form.cleaned_data
    picked = [("a", data["model"])]
    if data["compare"]:
        picked.append(("b", data["model_b"]))
    lanes = []
    for lane, model in picked:
        body = chat_body(data, model, lane_messages(turns, lane))
        token = store_pending(access, request.user, body, lane)
        url = reverse(
            "dashboard:playground-stream", kwargs={"slug": access.org.slug, "token": token}
        )
        lanes.append(Lane(lane, model, url))
    turn = TurnView(data["message"], lanes)
    fresh = PlaygroundForm(initial=form.settings_initial(), models=models)
    if request.htmx:
        context = _page_context(access, fresh, turn=turn)
        return render(request, TEMPLATE + "#pg-sent", context)
    # Without JavaScript there is no EventSource: the page says so (see the template).
    return render(request, TEMPLATE, _page_context(access, fresh, turns=[turn]))


# ---------------------------------------------------------------------------------------------
# The stream of one answer


@dataclass
class StreamStats:
    requested: str
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    via_auto: bool = False
    rerouted_from: str = ""
    reroute_reason: str = ""
    first_token_at: float | None = None
    finished_at: float | None = None
    usage: dict[str, int] | None = None

    def route(self, call: chat.ChatCall) -> None:
        self.model = call.route.model_id
        self.via_auto = call.route.via_auto
        self.rerouted_from = call.rerouted_from
        self.reroute_reason = call.reroute_reason

    @property
    def ttft_ms(self) -> int | None:
        if self.first_token_at is None:
            return None
        return round((self.first_token_at - self.started) * 1000)

    @property
    def duration_ms(self) -> int | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started) * 1000)

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens over the time from the first token to the last."""
        if not self.usage or self.first_token_at is None or self.finished_at is None:
            return None
        seconds = self.finished_at - self.first_token_at
        tokens = self.usage.get("completion_tokens") or 0
        if seconds < 0.01 or tokens < 2:
            return None
        return round(tokens / seconds, 1)


def sse(event: str, data: str) -> bytes:
    """One SSE event; every line of `data` gets its own `data:` field (the browser joins them
    back with LF)."""
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return f"event: {event}\n{lines}\n".encode()


def _fragment(name: str, context: dict[str, Any]) -> str:
    return render_to_string(f"{TEMPLATE}#{name}", context)


def _deltas(chunk: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, text) of a chunk's first choice: "reasoning" and "content" text, in that order."""
    out: list[tuple[str, str]] = []
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out.append(("reasoning", reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(("content", content))
    return out


def _error_text(exc: ServiceError) -> str:
    label = _STATUS_LABELS.get(exc.status, "Failed")
    text = f"{label} (HTTP {exc.status}): {exc.message}"
    retry = exc.headers.get("Retry-After", "")
    if exc.status == 429 and retry.isdigit():
        text += f". Try again in {retry} s."
    return text


def _record_refusal(
    caller: Caller, body: dict[str, Any], call: chat.ChatCall | None, exc: ServiceError
) -> None:
    """Usage rows for rate-limited and failed upstream calls, as the API writes them (invalid
    requests are not counted)."""
    if exc.status < 429:
        return
    if call is None:
        chat.record_failure(caller, body, endpoint=ENDPOINT, error=exc)
    else:
        chat.record_usage(call, status=exc.status, error=exc.message)


async def answer_events(caller: Caller, body: dict[str, Any], lane: str) -> AsyncIterator[bytes]:
    """SSE events of one answer: `token` (escaped HTML, one per upstream delta), `failure`
    (never `error`, which EventSource takes for a broken connection), and always a final `done`
    with the stats (and the answer, for the next turn's history)."""
    stats = StreamStats(requested=body["model"])
    parts: list[str] = []
    failed = False
    call: chat.ChatCall | None = None
    response = None
    chunks = None
    try:
        try:
            hotcache.sync(await generation.acurrent())
            call = await chat.prepare(caller, body, endpoint=ENDPOINT)
            stats.route(call)
            response = await chat.open_upstream(call)
            stats.route(call)  # an error-fallback may have moved the call
        except ServiceError as exc:
            _record_refusal(caller, body, call, exc)
            failed = True
            yield sse("failure", _fragment("pg-error", {"message": _error_text(exc)}))
        else:
            assert call is not None
            chunks = chat.orpc_chunks(call, response)
            try:
                async for chunk in chunks:
                    if chunk is chat.KEEPALIVE:
                        yield KEEPALIVE_FRAME
                        continue
                    for kind, text in _deltas(chunk):
                        if stats.first_token_at is None:
                            stats.first_token_at = time.perf_counter()
                        if kind == "content":
                            parts.append(text)
                        yield sse("token", _fragment("pg-token", {"kind": kind, "text": text}))
                    if isinstance(chunk.get("usage"), dict):
                        stats.usage = chunk["usage"]
            except chat.UpstreamStreamError as exc:
                failed = True
                message = f"Upstream failed mid-answer: {exc}"
                yield sse("failure", _fragment("pg-error", {"message": message}))
        stats.finished_at = time.perf_counter()
        answer = ""
        if not failed:
            answer = json.dumps(
                {"role": "assistant", "lane": lane, "content": "".join(parts)},
                ensure_ascii=False,
            )
        yield sse("done", _fragment("pg-done", {"stats": stats, "answer": answer}))
    except Exception:  # a bug, not the upstream: say so instead of a silently dead stream
        logger.exception("playground stream of %s failed", body.get("model"))
        message = "The server failed while answering; the error was logged."
        yield sse("failure", _fragment("pg-error", {"message": message}))
        yield sse("done", _fragment("pg-done", {"stats": stats, "answer": ""}))
    finally:
        # Also when the client left (cancelled): the upstream call ends here, at once.
        if chunks is not None:
            await chunks.aclose()
        if response is not None:
            await response.aclose()


@require_GET
@login_required
async def playground_stream(request: HtmxHttpRequest, slug: str, token: str) -> HttpResponse:
    """GET: the SSE stream of one answer (an EventSource opened by the turn's markup)."""
    # The membership lookup and the cache are sync: off the event loop.
    access, pending = await sync_to_async(claim_pending)(request, slug, token)
    response = StreamingHttpResponse(
        answer_events(access.caller, pending["body"], pending["lane"]),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"
    return response
