"""The playground: the page and its form, the turn that opens an SSE stream, and the stream view
itself against the loopback test upstream (AsyncClient, and the live server for Stop).

Streams run `chat.prepare` in worker threads, which need committed rows: the tests that stream
use the transactional database.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.test import AsyncClient

from dashboard.views.playground import Turn, lane_messages, parse_history
from gateway.models import UsageRecord
from orgs.models import ApiKey
from registry.services import put_grants, remove_model
from tests.dashboard.conftest import HTMX, PASSWORD
from tests.upstream_server import UpstreamServer

URL = "/orgs/org-acme/playground"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def _gateway_state() -> Iterator[None]:
    """Fresh rate-limit windows, and usage records written before the database goes away."""
    from gateway import limits, usage

    limits.reset_local()
    yield
    usage.flush()
    limits.reset_local()


@pytest.fixture
def upstream(settings: Any) -> Iterator[UpstreamServer]:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def up_model(people: Any, make_model: Callable[..., Any], upstream: UpstreamServer) -> Any:
    """`up_model(model_id, behaviour)`: an org A model served by the test upstream, whose
    upstream model name picks its behaviour (`chunks@5`, `echo`, `fault-429`...)."""

    def make(model_id: str = "acme:up", behaviour: str = "chunks@5", **overrides: Any) -> Any:
        fields = {"baseUrl": upstream.url + "/v1", "modelId": behaviour, "auth": {"type": "none"}}
        return make_model(people.org_a, model_id, **{**fields, **overrides})

    return make


def send(client: Any, model: str = "acme:up", message: str = "hello", **extra: Any) -> Any:
    data: dict[str, Any] = {"model": model, "message": message, **extra}
    return client.post(URL, data, headers=HTMX)


def stream_urls(body: str) -> list[str]:
    return [html.unescape(u) for u in re.findall(r'sse-connect="([^"]+)"', body)]


def pending_body(url: str) -> dict[str, Any]:
    token = url.rsplit("/", 1)[1]
    return cache.get(f"dashboard:playground:{token}")["body"]


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) of every event; comments (keep-alives) are skipped."""
    events = []
    for block in raw.decode().split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            events.append((name, "\n".join(data)))
    return events


def open_stream(user: Any, url: str) -> tuple[int, list[tuple[str, str]], list[float]]:
    """GET the stream with the async test client: its status, events and arrival times."""

    async def run() -> tuple[int, list[tuple[str, str]], list[float]]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(url)
        if response.status_code != 200:
            return response.status_code, [], []
        assert response["Content-Type"].startswith("text/event-stream")
        raw, times = b"", []
        async for part in response.streaming_content:
            raw += part
            times.append(time.monotonic())
        return 200, parse_sse(raw), times

    return async_to_sync(run)()


def tokens(events: list[tuple[str, str]]) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", d)) for e, d in events if e == "token"]


# ---------------------------------------------------------------------------------------------
# The page


def test_the_page_offers_auto_and_the_orgs_chat_models(people, login, make_model, granted):
    make_model(people.org_a, "acme:chat-1")
    make_model(people.org_b, "globex:secret-model")
    body = login(people.bob).get(URL).content.decode()
    assert "<html" in body and 'id="pg-transcript"' in body
    assert '<option value="auto"' in body
    assert '<option value="acme:chat-1"' in body
    assert '<option value="cluster:chat-a"' in body
    assert "cluster:embed" not in body  # not a chat model
    assert "globex:secret-model" not in body
    assert 'hx-ext="sse"' in body
    assert "/static/playground.js" in body


def test_the_model_picked_at_first_is_auto_when_the_org_has_one(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    # The test operator YAML's auto model (cluster:chat-a) is not granted to org A yet.
    assert '<option value="acme:chat-1" selected>' in login(people.bob).get(URL).content.decode()
    put_grants(people.org_a, ["cluster:chat-a"], actor="test")
    assert '<option value="auto" selected>' in login(people.bob).get(URL).content.decode()


def test_htmx_get_is_a_fragment(people, login):
    response = login(people.bob).get(URL, headers=HTMX)
    assert response.status_code == 200
    assert b"<html" not in response.content and b'id="playground"' in response.content
    assert "HX-Request" in response["Vary"]


def test_anonymous_is_sent_to_login(people):
    from django.test import Client

    for method, url in (("get", URL), ("post", URL), ("get", URL + "/stream/abc")):
        response = getattr(Client(), method)(url)
        assert response.status_code == 302 and response["Location"].startswith("/login?next=")


def test_another_orgs_user_gets_404(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    for user in (people.dave, people.nobody):
        client = login(user)
        assert client.get(URL).status_code == 404
        assert send(client, "acme:chat-1").status_code == 404
        assert client.get(URL + "/stream/abc").status_code == 404


def test_wrong_method_is_405(people, login):
    client = login(people.alice)
    assert client.put(URL).status_code == 405
    assert client.post(URL + "/stream/abc").status_code == 405


def test_sending_needs_a_csrf_token(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    client = login(people.alice, enforce_csrf_checks=True)
    assert send(client, "acme:chat-1").status_code == 403
    assert client.post(URL, {"model": "acme:chat-1", "message": "x"}).status_code == 403


def test_an_invalid_form_comes_back_with_errors_in_place(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    client = login(people.bob)
    response = send(client, "acme:chat-1", message="", temperature="7", system="keep me")
    body = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#pg-form" and response["HX-Reswap"] == "outerHTML"
    assert "This field is required." in body
    assert "Ensure this value is less than or equal to 2" in body
    assert "keep me" in body  # the user's input is kept
    assert "sse-connect" not in body

    body = send(client, "globex:chat").content.decode()
    assert "Select a valid choice" in body
    body = send(client, "acme:chat-1", compare="on").content.decode()
    assert "Pick the model to compare with." in body
    # Without JavaScript: the whole page, with the errors.
    page = client.post(URL, {"model": "acme:chat-1", "message": ""})
    assert page.status_code == 200 and b"<html" in page.content
    assert b"This field is required." in page.content


def test_a_conversation_that_cannot_be_read_is_a_form_error(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    body = send(login(people.bob), "acme:chat-1", msg=["{not json"]).content.decode()
    assert "The conversation could not be read" in body
    assert "sse-connect" not in body


def test_sending_returns_the_turn_and_stores_the_request(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    history = [
        json.dumps({"role": "user", "content": "first"}),
        json.dumps({"role": "assistant", "lane": "a", "content": "answer one"}),
    ]
    response = send(
        login(people.bob),
        "acme:chat-1",
        message="second",
        system="Be brief.",
        temperature="0.5",
        top_p="0.9",
        max_tokens="64",
        msg=history,
    )
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    [url] = stream_urls(body)
    assert url.startswith(URL + "/stream/")
    assert 'sse-close="done"' in body and 'sse-swap="token"' in body
    assert 'hx-swap-oob="true"' in body  # a fresh form: the message box is empty again
    assert "second</textarea>" not in body and "Be brief.</textarea>" in body
    assert pending_body(url) == {
        "model": "acme:chat-1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "second"},
        ],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
    }


def test_compare_opens_two_streams(people, login, make_model):
    make_model(people.org_a, "acme:chat-1")
    make_model(people.org_a, "acme:chat-2")
    body = send(
        login(people.bob), "acme:chat-1", compare="on", model_b="acme:chat-2"
    ).content.decode()
    first, second = stream_urls(body)
    assert pending_body(first)["model"] == "acme:chat-1"
    assert pending_body(second)["model"] == "acme:chat-2"
    assert "pg-compare" in body


def test_each_model_sees_its_own_answers():
    turns = parse_history(
        [
            json.dumps({"role": "user", "content": "q1"}),
            json.dumps({"role": "assistant", "lane": "a", "content": "a1"}),
            json.dumps({"role": "user", "content": "q2"}),
            json.dumps({"role": "assistant", "lane": "a", "content": "a2"}),
            json.dumps({"role": "assistant", "lane": "b", "content": "b2"}),
            json.dumps({"role": "user", "content": "q3 failed"}),
        ]
    )
    assert turns[1] == Turn("q2", {"a": "a2", "b": "b2"})
    assert [m["content"] for m in lane_messages(turns, "a")] == ["q1", "a1", "q2", "a2"]
    # Model B joined at turn 2: it sees A's first answer; the failed turn is left out.
    assert [m["content"] for m in lane_messages(turns, "b")] == ["q1", "a1", "q2", "b2"]
    with pytest.raises(ValueError):
        parse_history([json.dumps({"role": "system", "content": "sneaky"})])


# ---------------------------------------------------------------------------------------------
# The stream


pytestmark_stream = pytest.mark.django_db(transaction=True)


@pytestmark_stream
def test_tokens_arrive_as_separate_events(people, login, up_model, upstream):
    up_model(behaviour="chunks@5+delay@60")
    [url] = stream_urls(send(login(people.bob)).content.decode())
    status, events, times = open_stream(people.bob, url)
    assert status == 200
    assert tokens(events) == [f"tok{i} " for i in range(5)]
    assert [e for e, _ in events] == ["token"] * 5 + ["done"]
    assert times[-1] - times[0] > 0.2  # streamed as they came, not buffered
    done = events[-1][1]
    assert "acme:up" in done and "First token" in done and "tokens/s" in done
    assert "5 out" in done  # the upstream's usage
    answer = re.search(r'name="msg" form="pg-form" value="([^"]+)"', done)
    assert answer is not None
    assert json.loads(html.unescape(answer.group(1))) == {
        "role": "assistant",
        "lane": "a",
        "content": "tok0 tok1 tok2 tok3 tok4 ",
    }
    request = upstream.requests()[-1]
    assert request["body"]["stream"] is True
    assert request["body"]["messages"] == [{"role": "user", "content": "hello"}]


@pytestmark_stream
def test_model_output_is_escaped_text(people, login, up_model):
    # The echo upstream answers with the request it got, prompt included.
    up_model(behaviour="echo")
    [url] = stream_urls(send(login(people.bob), message=XSS).content.decode())
    _, events, _ = open_stream(people.bob, url)
    raw = "".join(data for _, data in events)
    assert XSS not in raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in raw
    assert "".join(tokens(events)).count(XSS) == 1
    for name, data in events:
        if name == "token":
            assert re.fullmatch(r"<span>[^<>]*</span>", data, flags=re.S), data


@pytestmark_stream
def test_a_stream_opens_once_and_only_for_its_user(people, login, up_model):
    up_model()
    [url] = stream_urls(send(login(people.bob)).content.decode())
    assert open_stream(people.alice, url)[0] == 404  # same org, another user
    assert open_stream(people.dave, url)[0] == 404
    assert open_stream(people.bob, url)[0] == 200
    assert open_stream(people.bob, url)[0] == 404  # spent


@pytestmark_stream
@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("fault-429", "Rate limited (HTTP 429): the upstream is rate limiting requests"),
        ("fault-5xx", "Upstream failed (HTTP 502): the upstream failed (HTTP 500)"),
        ("fault-inband-error", "Upstream failed mid-answer: the upstream reported an error"),
    ],
)
def test_upstream_errors_are_shown_in_the_transcript(people, login, up_model, behaviour, expected):
    up_model(behaviour=behaviour)
    [url] = stream_urls(send(login(people.bob)).content.decode())
    status, events, _ = open_stream(people.bob, url)
    assert status == 200
    errors = [html.unescape(d) for e, d in events if e == "failure"]
    assert len(errors) == 1 and expected in errors[0], errors
    # An SSE event named "error" would fire the EventSource's onerror (a broken connection).
    assert "error" not in [name for name, _ in events]
    assert events[-1][0] == "done"
    assert 'name="msg"' not in events[-1][1]  # a failed answer is not sent again


@pytestmark_stream
def test_a_model_removed_before_the_stream_is_a_readable_404(people, login, up_model):
    up_model()
    [url] = stream_urls(send(login(people.bob)).content.decode())
    remove_model(people.org_a, "acme:up", actor="test")
    _, events, _ = open_stream(people.bob, url)
    [error] = [html.unescape(d) for e, d in events if e == "failure"]
    assert "Model not found (HTTP 404): model 'acme:up' not found" in error


@pytestmark_stream
def test_the_stream_is_recorded_as_the_users_usage(people, login, up_model):
    from gateway import usage

    up_model(behaviour="chunks@3")
    [url] = stream_urls(send(login(people.bob)).content.decode())
    open_stream(people.bob, url)
    usage.flush()
    record = UsageRecord.objects.get()
    assert record.org_id == people.org_a.pk and record.api_key_id is None
    assert (record.model_id, record.status_code, record.stream) == ("acme:up", 200, True)
    assert record.completion_tokens == 3
    assert not ApiKey.objects.exists()


# ---------------------------------------------------------------------------------------------
# Stop, through the real ASGI server


def live_login(live_url: str, user: Any) -> httpx.Client:
    client = httpx.Client(base_url=live_url, timeout=10)
    page = client.get("/login")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    response = client.post(
        "/login",
        data={
            "username": user.get_username(),
            "password": PASSWORD,
            "csrfmiddlewaretoken": token.group(1),
        },
    )
    assert response.status_code == 302, response.text
    return client


@pytestmark_stream
def test_stop_closes_the_stream_and_cancels_the_upstream(people, up_model, upstream, live_url):
    up_model(behaviour="chunks@200+delay@50")
    client = live_login(live_url, people.bob)
    try:
        page = client.get(URL)
        csrf = re.search(r'"X-CSRFToken": "([^"]+)"', page.text)
        assert csrf is not None
        sent = client.post(
            URL,
            data={"model": "acme:up", "message": "count"},
            headers={"X-CSRFToken": csrf.group(1), **HTMX},
        )
        [url] = stream_urls(sent.text)
        seen = []
        with client.stream("GET", url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    seen.append(line)
                if len(seen) == 3:
                    break  # Stop: the browser closes the EventSource
        started = time.monotonic()
    finally:
        client.close()
    stats = upstream.wait_stats(timeout=2.0, client_disconnects=1)
    assert stats["client_disconnects"] == 1, stats
    assert time.monotonic() - started < 1.5
    assert stats["open_streams"] == 0
