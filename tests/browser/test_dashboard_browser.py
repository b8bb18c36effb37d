"""The dashboard in a real browser (headless Chromium through Playwright) against the live ASGI
server: sign-in, models with secrets, grants, auto models, health checks, API keys, the
playground's streams and Stop, usage, activity and batches, and script injection through model
names and model output.

`SCREENSHOTS=1` also saves a full-page screenshot of each page to docs/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Response, expect

from orgs.models import Role
from registry.models import ClusterGrant, HealthCheckResult, RegistryModel
from registry.services import add_model, put_grants
from tests.browser.conftest import CHROMIUM, PASSWORD, Team, Web, orm
from tests.conftest import model_body
from tests.upstream_server import UpstreamServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Chromium at {CHROMIUM}"),
]

ORG = "/orgs/org-acme"
CANARY = "sk-browser-canary-9d41c7e2-provider-secret"
# Markup that would run a script (or open a dialog) if a page inserted it as HTML.
XSS = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script><svg onload=alert(1)>"


# ---------------------------------------------------------------------------------------------
# Helpers


def definition(model_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid definition with no upstream auth (the shared model_body, adjusted)."""
    return model_body(model_id, **{**{"auth": {"type": "none"}, "rpm": 600}, **overrides})


def make_model(team: Team, model_id: str, **overrides: Any) -> RegistryModel:
    with orm():
        return add_model(team.org, definition(model_id, **overrides), actor="test")


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mark_page(page: Page) -> None:
    """A flag that a full page load would wipe: htmx swaps keep it."""
    page.evaluate("window.__noReload = 'still here'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__noReload") == "still here", "the page was reloaded"


def assert_no_script_ran(web: Web) -> None:
    assert web.page.evaluate("window.__xss") is None, "injected markup ran a script"
    assert web.dialogs == [], f"a dialog opened: {web.dialogs}"


def record_bodies(page: Page) -> list[str]:
    """The text of every page and htmx response the page receives from now on."""
    bodies: list[str] = []

    def keep(response: Response) -> None:
        if response.request.resource_type in ("document", "xhr", "fetch"):
            with contextlib.suppress(Exception):  # redirects have no body
                bodies.append(response.text())

    page.on("response", keep)
    return bodies


# ---------------------------------------------------------------------------------------------
# Sign-in


def test_sign_in_through_the_login_form(team: Team, web: Web) -> None:
    page = web.page
    page.goto(web.url(f"{ORG}/models"))
    expect(page).to_have_url(re.compile(r"/login\?next="))  # not signed in yet

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(web.url(f"{ORG}/models"))  # back to where `next` pointed
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="API keys")).to_be_visible()  # an org admin
    expect(nav.get_by_role("link", name="Grants")).to_have_count(0)  # not a cluster admin
    expect(page.locator(".topbar .user")).to_have_text("alice")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(web.url("/login"))
    page.goto(web.url(f"{ORG}/models"))
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_a_member_sees_no_admin_pages(team: Team, web: Web) -> None:
    web.sign_in(team.bob)
    page = web.page
    expect(page).to_have_url(web.url(f"{ORG}/models"))
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Health")).to_be_visible()
    expect(nav.get_by_role("link", name="API keys")).to_have_count(0)
    expect(page.get_by_role("link", name="Add a model")).to_have_count(0)


# ---------------------------------------------------------------------------------------------
# Models


def test_create_a_model_with_a_secret_that_is_never_shown(team: Team, web: Web) -> None:
    with orm():
        put_grants(team.org, ["cluster:chat-a", "cluster:chat-b", "cluster:embed"], actor="test")
    web.sign_in(team.alice)
    page = web.page
    bodies = record_bodies(page)
    page.goto(web.url(f"{ORG}/models"))
    page.get_by_role("link", name="Add a model").click()
    expect(page.get_by_role("heading", name="Add a model")).to_be_visible()

    page.locator("#id_id").fill("acme:browser-chat")
    page.locator("#id_display_name").fill("Browser chat")
    page.locator("#id_provider").fill("openai-compatible")
    page.locator("#id_model_id").fill("gpt-browser")
    page.locator("#id_base_url").fill("https://models.example.com/v1")
    page.locator("#id_context_window").fill("32768")
    secret_box = page.get_by_label("API key", exact=True)
    expect(secret_box).to_have_attribute("type", "password")  # masked while typed
    secret_box.fill(CANARY)
    web.screenshot("model-form")
    page.locator("#id_base_url").fill("not a url")  # refused: the form comes back
    page.get_by_role("button", name="Add model").click()

    # The error comes back in place; the typed secret is not sent back to the browser.
    expect(page.locator("#id_base_url ~ .error")).to_be_visible()
    expect(page.get_by_text("The API key you typed was not kept")).to_be_visible()
    expect(secret_box).to_have_value("")
    page.locator("#id_base_url").fill("https://models.example.com/v1")
    secret_box.fill(CANARY)
    page.get_by_role("button", name="Add model").click()

    expect(page).to_have_url(web.url(f"{ORG}/models"))
    expect(page.get_by_role("status")).to_contain_text("Model acme:browser-chat added.")
    row = page.get_by_role("row").filter(has_text="acme:browser-chat")
    expect(row).to_contain_text("Browser chat")
    expect(row).to_contain_text("org model")
    expect(row).to_contain_text("32768")
    web.screenshot("models")

    row.get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit acme:browser-chat")).to_be_visible()
    expect(page.get_by_text("An API key is stored. It is never shown")).to_be_visible()
    expect(page.get_by_label("API key", exact=True)).to_have_value("")

    with orm():
        stored = RegistryModel.objects.get(registry_id="acme:browser-chat")
        assert stored.get_auth() == {"type": "api-key", "value": CANARY}
    assert any("The API key you typed was not kept" in body for body in bodies), "htmx unseen"
    leaks = [body[:200] for body in bodies if CANARY in body]
    assert not leaks, f"the provider secret was sent to the browser: {leaks}"
    assert CANARY not in page.content()


def test_a_model_name_with_markup_runs_no_script(team: Team, web: Web) -> None:
    make_model(team, "acme:xss", displayName=XSS)
    web.sign_in(team.alice, f"{ORG}/models")
    page = web.page
    row = page.get_by_role("row").filter(has_text="acme:xss")
    expect(row.get_by_role("cell", name=XSS)).to_be_visible()  # shown as text
    expect(page.locator("#model-table img, #model-table script, #model-table svg")).to_have_count(0)

    page.get_by_role("searchbox").fill("onerror")  # htmx swaps the table in
    expect(page).to_have_url(re.compile(r"\?q=onerror"))
    expect(page.get_by_role("row").filter(has_text="acme:xss")).to_contain_text(XSS)
    assert_no_script_ran(web)

    page.goto(web.url(f"{ORG}/auto"))  # the select lists the display name
    expect(page.locator("#auto-select-completions option", has_text=XSS)).to_have_count(1)
    assert_no_script_ran(web)
    page.goto(web.url(f"{ORG}/models/edit/acme:xss"))
    expect(page.locator("#id_display_name")).to_have_value(XSS)
    assert_no_script_ran(web)


# ---------------------------------------------------------------------------------------------
# Grants


def test_toggle_a_grant_in_place(team: Team, web: Web) -> None:
    with orm():
        put_grants(team.other_org, ["cluster:chat-a", "cluster:embed"], actor="test")
    web.sign_in(team.root)
    page = web.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Grants").click()
    expect(page.get_by_role("heading", name="Grants")).to_be_visible()
    row = page.locator("#grant-row-org-acme")
    count = row.locator("td.num")
    expect(count).to_have_text("0/5")
    expect(page.locator("#grant-row-org-globex td.num")).to_have_text("2/5")
    web.screenshot("grants")
    mark_page(page)

    row.get_by_role("button", name="grant cluster:chat-b").click()
    expect(count).to_have_text("1/5")
    expect(row.get_by_role("button", name="revoke cluster:chat-b")).to_have_attribute(
        "aria-pressed", "true"
    )
    row.get_by_role("button", name="grant cluster:tts").click()
    expect(count).to_have_text("2/5")
    assert_not_reloaded(page)
    with orm():
        granted = set(ClusterGrant.objects.filter(org=team.org).values_list("model_id", flat=True))
    assert granted == {"cluster:chat-b", "cluster:tts"}

    row.get_by_role("button", name="revoke cluster:chat-b").click()
    expect(count).to_have_text("1/5")
    assert_not_reloaded(page)
    page.reload()
    expect(page.locator("#grant-row-org-acme td.num")).to_have_text("1/5")


# ---------------------------------------------------------------------------------------------
# Auto models


def test_set_and_clear_an_auto_model(team: Team, web: Web) -> None:
    with orm():
        put_grants(team.org, ["cluster:chat-a", "cluster:chat-b", "cluster:embed"], actor="test")
    make_model(team, "acme:own-chat", displayName="Own chat")
    web.sign_in(team.alice, f"{ORG}/auto")
    page = web.page
    row = page.locator("#auto-completions")
    expect(row).to_contain_text("cluster:chat-a")
    expect(row).to_contain_text("operator default")
    mark_page(page)

    row.get_by_label("Model for completions").select_option("acme:own-chat")
    row.get_by_role("button", name="Set").click()
    expect(row.locator("td").first).to_have_text("acme:own-chat")
    expect(row).to_contain_text("org override")
    expect(row).to_contain_text("by user:alice")
    expect(row.get_by_role("button", name="Use default")).to_be_visible()
    expect(page.locator("#auto-embeddings")).to_contain_text("operator default")
    web.screenshot("auto-models")

    row.get_by_role("button", name="Use default").click()
    expect(row).to_contain_text("operator default")
    expect(row.locator("td").first).to_have_text("cluster:chat-a")
    assert_not_reloaded(page)


# ---------------------------------------------------------------------------------------------
# Health


def test_check_now_updates_the_row(team: Team, web: Web, upstream: UpstreamServer) -> None:
    with orm():
        put_grants(team.org, ["cluster:chat-a"], actor="test")
    make_model(team, "acme:up", baseUrl=f"{upstream.url}/v1")
    make_model(team, "acme:down", baseUrl=f"http://127.0.0.1:{closed_port()}/v1")
    web.sign_in(team.alice, f"{ORG}/health")
    page = web.page
    up_row = page.get_by_role("row").filter(has_text="acme:up")
    down_row = page.get_by_role("row").filter(has_text="acme:down")
    expect(up_row).to_contain_text("not checked")
    expect(up_row).to_contain_text("no probes yet")
    mark_page(page)

    up_row.get_by_role("button", name="Check now").click()
    expect(up_row.locator(".badge-ok")).to_have_text("up")
    expect(up_row.locator("td.num")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(up_row).to_contain_text("100% up")
    expect(up_row.locator("svg.sparkline rect")).to_have_count(1)
    assert [r["path"] for r in upstream.requests()] == ["/v1/models"]

    down_row.get_by_role("button", name="Check now").click()
    expect(down_row.locator(".badge-bad")).to_have_text("down")
    expect(down_row.locator("td.error-text")).not_to_be_empty()
    up_row.get_by_role("button", name="Check now").click()
    expect(up_row.locator("svg.sparkline rect")).to_have_count(2)
    assert_not_reloaded(page)
    with orm():
        assert HealthCheckResult.objects.count() == 3
    web.screenshot("health")


# ---------------------------------------------------------------------------------------------
# API keys


def issue_key(web: Web, name: str) -> str:
    """Issue a key on the API keys page; the raw key shown."""
    page = web.page
    if page.url != web.url(f"{ORG}/keys"):
        page.goto(web.url(f"{ORG}/keys"))
    page.get_by_label("Name").fill(name)
    page.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Issue key").click()
    raw = page.locator("#raw-key")
    expect(raw).to_have_text(re.compile(r"^mk_\S{20,}$"))
    return raw.inner_text()


def test_an_issued_key_is_shown_once(team: Team, web: Web) -> None:
    web.sign_in(team.alice, f"{ORG}/keys")
    page = web.page
    expect(page.get_by_text("This org has no API keys yet.")).to_be_visible()
    token = issue_key(web, "ci pipeline")
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="ci pipeline")
    expect(row).to_contain_text("Admin")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text(f"{token[:12]}…")
    web.screenshot("api-keys")

    page.reload()
    expect(page.get_by_role("row").filter(has_text="ci pipeline")).to_be_visible()
    expect(page.locator("#raw-key")).to_have_count(0)
    assert token not in page.content()
    page.goto(web.url(f"{ORG}/keys"))
    expect(page.get_by_role("row").filter(has_text="ci pipeline")).to_be_visible()
    assert token not in page.content()

    with orm():
        from orgs.services import find_key

        key = find_key(token)
    assert key.name == "ci pipeline" and key.org_id == team.org.pk


def test_back_does_not_show_an_issued_key_again(team: Team, web: Web) -> None:
    web.sign_in(team.alice, f"{ORG}/keys")
    page = web.page
    token = issue_key(web, "ci pipeline")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Models", exact=True).click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    page.go_back(wait_until="commit")  # a page restored from the cache fires no load event
    expect(page.get_by_role("row").filter(has_text="ci pipeline")).to_be_visible()
    assert page.locator("#raw-key").count() == 0, "the raw key is shown again"
    assert token not in page.content()


# ---------------------------------------------------------------------------------------------
# Playground: answers stream from the loopback test upstream


def upstream_model(team: Team, upstream: UpstreamServer, model_id: str, behaviour: str) -> None:
    """An org model served by the test upstream; `behaviour` is its upstream model name."""
    make_model(team, model_id, baseUrl=f"{upstream.url}/v1", modelId=behaviour)


def send(page: Page, model: str, message: str) -> Locator:
    """Send a message from the playground; the answer that streams in."""
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Message").fill(message)
    before = page.locator(".pg-answer").count()
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".pg-answer").nth(before)
    expect(answer).to_be_attached()
    return answer


def usage_rows(count: int, **filters: Any) -> list[Any]:
    """The usage records matching `filters` once `count` exist (they are written in batches,
    off the request path); waiting here also keeps them from landing after the test."""
    from gateway import usage
    from gateway.models import UsageRecord

    deadline = time.monotonic() + 5
    while True:
        with orm():
            usage.flush()
            rows = list(UsageRecord.objects.filter(**filters).order_by("id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def watch(
    answer: Locator, seconds: float, on_step: Callable[[int], None] | None = None
) -> list[str]:
    """The distinct texts of an answer seen while it is marked as streaming, oldest first."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        streaming, text = answer.evaluate(
            "el => [el.classList.contains('is-streaming'), el.querySelector('.pg-text').textContent]"
        )
        if not streaming:
            break
        if text and (not seen or seen[-1] != text):
            seen.append(text)
            if on_step is not None:
                on_step(len(seen))
        time.sleep(0.04)  # observing the stream: a poll, not a wait for a state
    return seen


def test_a_playground_answer_streams_in(team: Team, web: Web, upstream: UpstreamServer) -> None:
    upstream_model(team, upstream, "acme:stream", "delay@150+chunks@12")
    web.sign_in(team.alice)
    page = web.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    mark_page(page)

    answer = send(page, "acme:stream", "Count to twelve, slowly.")
    expect(page.locator(".pg-user .pg-text").last).to_have_text("Count to twelve, slowly.")
    expect(answer).to_have_attribute("aria-busy", "true")
    expect(answer.get_by_role("button", name="Stop")).to_be_visible()

    def midway(step: int) -> None:
        if step == 4:
            # Tokens are arriving: the stats line no longer waits for the first one.
            assert answer.locator(".pg-stats").inner_text() == "Streaming…"
            web.screenshot("playground-streaming")

    seen = watch(answer, 10, midway)
    assert len(seen) >= 4, f"the answer did not arrive in steps: {seen}"
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:], strict=False))
    assert "tok11" not in seen[0]

    expect(answer).not_to_have_class(re.compile(r"\bis-streaming\b"))
    text = " ".join(f"tok{i}" for i in range(12))
    expect(answer.locator(".pg-text")).to_have_text(text)
    expect(answer.get_by_role("button", name="Stop")).to_be_hidden()
    stats = answer.locator(".pg-stats")
    expect(stats).to_contain_text("acme:stream")
    expect(stats).to_contain_text(re.compile(r"First token\s*\d+ ms"))
    expect(stats).to_contain_text(re.compile(r"Usage\s*\d+ in · 12 out · \d+ total"))
    expect(stats).to_contain_text(re.compile(r"Speed\s*[\d.]+ tokens/s"))
    assert_not_reloaded(page)
    assert upstream.stats()["completed_streams"] == 1
    web.screenshot("playground-finished")
    [row] = usage_rows(1, model_id="acme:stream")
    assert (row.status_code, row.completion_tokens, row.api_key_id) == (200, 12, None)


def test_stop_ends_the_stream_and_the_upstream_call(
    team: Team, web: Web, upstream: UpstreamServer
) -> None:
    upstream_model(team, upstream, "acme:slow", "delay@200+chunks@50")
    web.sign_in(team.alice, f"{ORG}/playground")
    page = web.page
    answer = send(page, "acme:slow", "Take your time.")
    text = answer.locator(".pg-text")
    expect(text).to_contain_text("tok2")

    answer.get_by_role("button", name="Stop").click()
    expect(answer.locator(".pg-stats")).to_have_text("Stopped.")
    expect(answer).not_to_have_class(re.compile(r"\bis-streaming\b"))
    stopped_at = text.text_content() or ""
    time.sleep(0.8)  # four upstream chunk intervals: nothing more may arrive
    assert text.text_content() == stopped_at
    assert "tok49" not in stopped_at

    stats = upstream.wait_stats(timeout=2, client_disconnects=1, open_streams=0)
    assert stats["client_disconnects"] == 1 and stats["open_streams"] == 0, stats
    assert stats["completed_streams"] == 0
    [row] = usage_rows(1, model_id="acme:slow")
    assert row.status_code == 499 and row.error == "cancelled"
    # What arrived before Stop stays in the conversation for the next turn.
    kept = answer.locator('input[name="msg"]')
    expect(kept).to_have_count(1)
    assert stopped_at.strip() in (kept.get_attribute("value") or "")


def test_model_output_with_markup_runs_no_script(
    team: Team, web: Web, upstream: UpstreamServer
) -> None:
    upstream_model(team, upstream, "acme:echo", "echo")
    web.sign_in(team.alice, f"{ORG}/playground")
    page = web.page
    answer = send(page, "acme:echo", XSS)  # the echo model answers with the request it got
    expect(answer.locator(".pg-stats")).to_contain_text("First token")
    expect(answer.locator(".pg-text")).to_contain_text(XSS)
    expect(page.locator(".pg-user .pg-text")).to_have_text(XSS)
    expect(page.locator("#pg-transcript :is(img, script, svg)")).to_have_count(0)
    assert_no_script_ran(web)

    # The next turn posts the conversation (with the markup) back; still only text.
    second = send(page, "acme:echo", "and again")
    expect(second.locator(".pg-stats")).to_contain_text("First token")
    expect(page.locator("#pg-transcript :is(img, script, svg)")).to_have_count(0)
    assert_no_script_ran(web)
    history = upstream.requests()[-1]["body"]["messages"]
    assert history[0] == {"role": "user", "content": XSS}
    assert history[1]["role"] == "assistant" and XSS in history[1]["content"]
    assert len(usage_rows(2, model_id="acme:echo")) == 2


# ---------------------------------------------------------------------------------------------
# Usage, activity, batches


def test_usage_charts_and_regroups_in_place(team: Team, web: Web) -> None:
    from django.utils import timezone

    from gateway.models import UsageRecord
    from orgs.services import issue_api_key

    with orm():
        key, _ = issue_api_key(team.org, name="ci", actor="user:alice")
        now = timezone.now()
        models = ["acme:chat", "cluster:chat-a", "acme:summarise"]
        users = ["", "customer-1", XSS]
        UsageRecord.objects.bulk_create(
            UsageRecord(
                org=team.org,
                api_key=key if i % 3 else None,
                end_user=users[i % 3],
                endpoint="chat.completions",
                requested_model=models[i % 3],
                model_id=models[i % 3],
                stream=bool(i % 2),
                status_code=502 if i % 9 == 4 else 200,
                prompt_tokens=40 + 7 * (i % 5),
                completion_tokens=120 + 13 * (i % 7),
                total_tokens=160 + 7 * (i % 5) + 13 * (i % 7),
                latency_ms=300 + 25 * (i % 11),
                ttft_ms=80 + 5 * (i % 4),
                created_at=now - timedelta(hours=2.7 * i + (i % 4)),
            )
            for i in range(60)
        )
    web.sign_in(team.alice)
    page = web.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    totals = page.locator("dl.totals")
    expect(totals).to_contain_text(re.compile(r"Requests\s*60"))
    expect(totals).to_contain_text(re.compile(r"Errors\s*7"))
    expect(page.get_by_role("img", name=re.compile("Requests per model"))).to_be_visible()
    expect(page.locator("table tbody tr")).to_have_count(3)
    web.screenshot("usage")
    mark_page(page)

    page.get_by_role("navigation", name="Per").get_by_role("link", name="per end user").click()
    expect(page).to_have_url(re.compile(r"group=user"))
    expect(page.get_by_role("heading", name="Requests per end user")).to_be_visible()
    expect(page.get_by_role("cell", name=XSS)).to_be_visible()
    page.get_by_role("navigation", name="Chart").get_by_role("link", name="Tokens").click()
    expect(page.get_by_role("heading", name="Tokens per end user")).to_be_visible()
    expect(page.locator(".legend")).to_contain_text(XSS)
    page.get_by_role("navigation", name="Period").get_by_role("link", name="Last 24 hours").click()
    expect(page.locator(".period-note")).to_contain_text("per hour")
    expect(totals).not_to_contain_text(re.compile(r"Requests\s*60"))
    assert_not_reloaded(page)
    expect(page.locator("#usage-panel img")).to_have_count(0)
    assert_no_script_ran(web)


def test_activity_lists_and_filters_changes(team: Team, web: Web) -> None:
    from orgs.services import issue_api_key
    from registry.services import set_auto_model

    with orm():
        put_grants(team.org, ["cluster:chat-a", "cluster:embed"], actor="user:root")
        add_model(team.org, definition("acme:chat", displayName=XSS), actor="user:alice")
        set_auto_model(team.org, "completions", {"modelId": "acme:chat"}, actor="user:alice")
        issue_api_key(team.org, name="ci", actor="user:alice")
    web.sign_in(team.alice, f"{ORG}/activity")
    page = web.page
    rows = page.locator("#activity-panel tbody tr")
    expect(rows.first).to_be_visible()
    total = rows.count()
    assert total >= 4
    expect(page.locator("#activity-panel")).to_contain_text(XSS)  # in a model's changes
    web.screenshot("activity")
    mark_page(page)

    page.get_by_label("Actor").fill("user:root")
    expect(page).to_have_url(re.compile(r"actor=user%3Aroot"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("user:root")
    page.get_by_role("link", name="Reset").click()
    expect(rows).to_have_count(total)
    assert_no_script_ran(web)


def test_batches_show_live_progress(team: Team, web: Web, settings: Any, tmp_path: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    from batches import services
    from batches.models import Batch, BatchStatus
    from orgs.auth import Caller

    settings.MEDIA_ROOT = str(tmp_path / "media")
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "acme:chat", "messages": [{"role": "user", "content": "hi"}]},
    }
    jsonl = (json.dumps(line) + "\n").encode()
    with orm():
        caller = Caller(org=team.org, role=Role.ADMIN)
        source = services.create_file(
            caller, SimpleUploadedFile("prompts.jsonl", jsonl, "application/jsonl"), "batch"
        )
        now = timezone.now()

        def batch(status: str, done: int, failed: int = 0, **fields: Any) -> Batch:
            return Batch.objects.create(
                org=team.org,
                input_file=source,
                endpoint="/v1/chat/completions",
                status=status,
                total=40,
                completed=done,
                failed=failed,
                expires_at=now + timedelta(hours=24),
                **fields,
            )

        batch(BatchStatus.COMPLETED, 38, 2, completed_at=now, metadata={"project": "docs"})
        batch(
            BatchStatus.FAILED,
            0,
            failed_at=now,
            errors={"data": [{"line": 3, "message": "custom_id r1 is used twice"}]},
        )
        running = batch(BatchStatus.IN_PROGRESS, 11, 1, metadata={"project": "demo"})
    web.sign_in(team.bob, f"{ORG}/batches")  # any member
    page = web.page
    row = page.locator(f"#batch-{running.public_id}")
    expect(row).to_contain_text("In Progress")
    expect(row).to_contain_text("12 / 40 (30%)")
    expect(page.get_by_text("updating live")).to_be_visible()
    web.screenshot("batches")
    mark_page(page)

    with orm():
        Batch.objects.filter(pk=running.pk).update(
            status=BatchStatus.COMPLETED, completed=39, completed_at=timezone.now()
        )
    expect(row).to_contain_text("Completed")  # the table polls every 2 s
    expect(row).to_contain_text("40 / 40 (100%)")
    expect(page.get_by_text("updating live")).to_have_count(0)  # polling stopped
    assert_not_reloaded(page)

    # Upload through the Files tab (multipart through htmx).
    page.get_by_role("navigation", name="Batches and files").get_by_role(
        "link", name="Files"
    ).click()
    page.get_by_label("File", exact=True).set_input_files(
        files=[{"name": "more.jsonl", "mimeType": "application/jsonl", "buffer": jsonl * 3}]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text(
        re.compile(r"Uploaded more.jsonl as \S+ \(3 lines\)")
    )
    expect(page.get_by_role("row").filter(has_text="more.jsonl")).to_be_visible()
