"""The Content-Security-Policy in a real browser (W6, W8; goal G9): every main dashboard page and
the Django admin load in Chromium with zero CSP violations while htmx, app.js, the SSE extension
and the playground run, and a 4xx answer to an htmx request is shown to the user.

Violations are collected twice: the `securitypolicyviolation` DOM event of each document and the
console lines Chromium writes for them. A control at the end proves the collector sees one.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from registry.services import add_model, put_grants
from tests.browser.conftest import CHROMIUM, Team, Web, orm
from tests.browser.test_dashboard_browser import definition, send
from tests.hardening.figures import record
from tests.upstream_server import UpstreamServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Chromium at {CHROMIUM}"),
]

ORG = "/orgs/org-acme"
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "") + " " + (e.sample || ""));
});
"""
PAGES = [
    ("models", f"{ORG}/models"),
    ("model form", f"{ORG}/models/new"),
    ("grants", "/grants"),
    ("auto", f"{ORG}/auto"),
    ("health", f"{ORG}/health"),
    ("keys", f"{ORG}/keys"),
    ("batches", f"{ORG}/batches"),
    ("files", f"{ORG}/files"),
    ("playground", f"{ORG}/playground"),
    ("usage", f"{ORG}/usage"),
    ("activity", f"{ORG}/activity"),
    ("api docs", "/docs/api"),
    ("admin", "/admin/"),
    ("admin list", "/admin/registry/registrymodel/"),
    ("admin keys", "/admin/orgs/apikey/"),
    ("admin cluster registry", "/admin/registry/registrymodel/cluster-registry/"),
]


class Violations:
    """CSP violations seen by the page: DOM events (per document) and console lines."""

    def __init__(self, web: Web) -> None:
        self.web = web
        self.console: list[str] = []
        web.page.add_init_script(WATCH)
        web.page.on("console", self._on_console)

    def _on_console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.console.append(text)

    def in_document(self) -> list[str]:
        return list(self.web.page.evaluate("window.__csp || []"))

    def all(self) -> list[str]:
        return self.in_document() + self.console


def scripts_ran(web: Web) -> None:
    """htmx and app.js were loaded and executed under the policy."""
    page = web.page
    page.wait_for_function("() => window.htmx && window.htmx.version")
    assert page.evaluate("document.documentElement.classList.contains('js')"), "app.js"


def test_every_main_page_loads_without_a_csp_violation(
    team: Team, web: Web, upstream: UpstreamServer
) -> None:
    with orm():
        get_user_model().objects.filter(pk=team.root.pk).update(is_staff=True)
        put_grants(team.org, ["cluster:chat-a"], actor="test")
        model = definition("acme:live", baseUrl=f"{upstream.url}/v1", modelId="chunks@6")
        stored = add_model(team.org, model, actor="test")
    violations = Violations(web)
    web.sign_in(team.root)
    page = web.page
    clean = 0
    pages = [*PAGES, ("admin change form", f"/admin/registry/registrymodel/{stored.pk}/change/")]
    for name, path in pages:
        response = page.goto(web.url(path))
        assert response is not None and response.status == 200, name
        assert "nonce-" in response.headers["content-security-policy"], name
        if not path.startswith("/admin/"):
            scripts_ran(web)
        page.wait_for_load_state("networkidle")
        found = violations.all()
        assert found == [], f"{name}: {found}"
        clean += 1

    # htmx at work under the policy: a grant toggled in place (hx-post with the CSRF header) ...
    page.goto(web.url("/grants"))
    row = page.locator("#grant-row-org-acme")
    row.get_by_role("button", name="grant cluster:chat-b").click()
    expect(row.get_by_role("button", name="revoke cluster:chat-b")).to_be_visible()
    # ... a confirmation loaded into the modal, closed by app.js ...
    page.goto(web.url(f"{ORG}/models"))
    page.get_by_role("row").filter(has_text="acme:live").get_by_role("link", name="Delete").click()
    expect(page.locator("#modal")).to_contain_text("acme:live")
    page.keyboard.press("Escape")
    expect(page.locator("#modal")).to_be_empty()
    # ... and a streamed playground answer (the SSE extension and playground.js).
    page.goto(web.url(f"{ORG}/playground"))
    answer = send(page, "acme:live", "Say something.")
    expect(answer.locator(".pg-text")).to_have_text(" ".join(f"tok{i}" for i in range(6)))
    assert violations.all() == []

    # The collector is not blind: a style attribute inserted as HTML is reported.
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"color:red\">x</p>')")
    page.wait_for_function("() => window.__csp.length > 0")
    assert any("style-src" in v for v in violations.in_document())
    record("G9", pages_without_csp_violations=clean, pages_in_browser=len(pages))


def test_an_htmx_error_is_shown_to_the_user(team: Team, web: Web) -> None:
    """W8: the issue-key form posts through htmx; without the CSRF cookie the server answers 403
    and app.js shows the reason instead of doing nothing."""
    violations = Violations(web)
    web.sign_in(team.alice, f"{ORG}/keys")
    page = web.page
    cookies = [c for c in web.context.cookies() if c["name"] != "csrftoken"]
    web.context.clear_cookies()
    web.context.add_cookies(cookies)  # still signed in, but the CSRF cookie is gone
    page.get_by_label("Name").fill("refused")
    with page.expect_response(re.compile(r"/keys$")) as info:
        page.get_by_role("button", name="Issue key").click()
    assert info.value.status == 403
    alert = page.locator("#messages [role=alert]")
    expect(alert).to_contain_text("Not allowed (HTTP 403)")
    expect(alert).to_contain_text("security token of this form was missing")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()  # the page stays
    alert.get_by_role("button", name="Dismiss").click()
    expect(alert).to_have_count(0)
    assert violations.all() == []
