"""Script injection in real Chromium (W1, W2; goal G10).

Forty-eight payloads (script tags, event handlers, attribute breakouts with ' and ", javascript:
and data: URLs, htmx attributes, template syntax, </textarea> and </title>, RTL and full-width
tricks, iframe srcdoc, mXSS through <math>/<svg>/<noscript>, CSS urls and expressions, <base>,
<meta refresh>...) go into every user-controlled text the dashboard shows: org names; model
display names, public names, providers, upstream model ids, base64 formats and base URLs; API
key names; end-user ids (X-On-Behalf-Of) in usage, batches and files; batch metadata and batch
errors; file names; upstream error text (health checks, chat errors); the audit trail; and model
output streamed into the playground. Everything is seeded through the services and the API, then
every page that shows it is loaded in Chromium, as whole pages and as htmx swaps.

Each payload, if it ever ran, would call `__xss(n)` (a console mark), open a dialog, or make a
request to a canary URL (`http://127.0.0.1:<closed port>/xss-n`) or to `/xss-n` (htmx). The
context ignores any Content-Security-Policy (`bypass_csp`), so a pass proves the escaping itself.
Every page is also checked without running anything: no injected element, event-handler
attribute, htmx attribute or foreign URL exists in its DOM, and each payload is present as
literal text (or as an input's value) where it is shown.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from orgs.models import Role
from orgs.services import create_org, issue_api_key
from registry.services import add_model
from tests.browser.conftest import (
    CHROMIUM,
    PASSWORD,
    TIMEOUT_MS,
    VIEWPORT,
    BrowserSession,
    Team,
    Web,
    _serve_static,
    orm,
)
from tests.conftest import model_body
from tests.hardening.figures import record
from tests.upstream_server import UpstreamServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Chromium at {CHROMIUM}"),
]

ORG = "/orgs/org-acme"
API = "/api/v1/llm"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CANARY_ORIGIN = f"http://127.0.0.1:{_closed_port()}"

# `@N@` is the payload's number, `@C@` its canary URL. Every payload stays within 80 characters
# (batch errors quote the first 80 of a custom_id).
TEMPLATES = [
    "<script>__xss(@N@)</script>",
    "<img src=x onerror=__xss(@N@)>",
    '"><svg onload=__xss(@N@)>',
    "'><svg onload=__xss(@N@)>",
    "<svg><script>__xss(@N@)</script></svg>",
    "javascript:__xss(@N@)",
    '<a href="javascript:__xss(@N@)" id=xss@N@>link</a>',
    '<div hx-get="/xss-@N@" hx-trigger="load">htmx</div>',
    '" hx-get="/xss-@N@" hx-trigger="load" x="',
    "' hx-get='/xss-@N@' hx-trigger='load' x='",
    '<div hx-on::load="__xss(@N@)">hx-on</div>',
    "<b hx-on:htmx:load=__xss(@N@) hx-get=/xss-@N@ hx-trigger=load>",
    "{{7*7}} {% debug %} ${7*7} #{7*7} <%= 7*7 %> @N@",
    "</textarea><img src=x onerror=__xss(@N@)>",
    "</title><img src=x onerror=__xss(@N@)>",
    "\u202e<img src=x onerror=__xss(@N@)>\u202c",  # RTL override: refused in names
    '<iframe srcdoc="<script>parent.__xss(@N@)</script>"></iframe>',
    '<iframe src="data:text/html,<img src=@C@>"></iframe>',
    '<object data="data:text/html,<script>alert(@N@)</script>"></object>',
    "<math><mtext><table><mglyph><style><img src=x onerror=__xss(@N@)>",
    "<svg><style><img src=x onerror=__xss(@N@)></style></svg>",
    '<noscript><p title="</noscript><img src=x onerror=__xss(@N@)>">',
    '<div style="background:url(@C@)">css</div>',
    '<div style="width:expression(__xss(@N@))">css</div>',
    "<style>@import '@C@';</style>",
    "<link rel=stylesheet href=@C@>",
    '<base href="@C@/">',
    '<meta http-equiv="refresh" content="0;url=@C@">',
    "<input autofocus onfocus=__xss(@N@)>",
    "<details open ontoggle=__xss(@N@)>",
    "<body onload=__xss(@N@)>",
    "<video><source onerror=__xss(@N@)></video>",
    "&lt;script&gt;__xss(@N@)&lt;/script&gt;",  # must stay visible as &lt;…, not decoded
    "<scr<script>ipt>__xss(@N@)</scr</script>ipt>",
    "<IMG SRC=x OnErRoR=__xss(@N@)>",
    '<img src=x onerror="&#95;&#95;xss(@N@)">',
    "<embed src=@C@>",
    "data:text/html,<script>alert(@N@)</script>",
    "<img src=@C@>",
    "<svg><animate onbegin=__xss(@N@) attributeName=x dur=1s>",
    "</script><script>__xss(@N@)</script>",
    "';__xss(@N@);//",
    '"-alert(@N@)-"',
    "\uff1cscript\uff1e__xss(@N@)\uff1c/script\uff1e",  # full-width brackets
    "<x hx-vals='js:{a:__xss(@N@)}' hx-post=/xss-@N@ hx-trigger=load>",
    "<form action=@C@><button id=xss@N@>go</button></form>",
    "<img src=x onerror=alert(@N@)>",
    "<svg/onload=alert(@N@)>",
]
# Without whitespace, '#', '?' or '\': these fit in a URL path, which upstream errors quote.
PATH_TEMPLATES = [
    "<svg/onload=__xss(@N@)>",
    "<img/src=x/onerror=__xss(@N@)>",
    '"><script>__xss(@N@)</script>',
    "'><iframe/srcdoc=<script>parent.__xss(@N@)</script>>",
    "<b/hx-get=/xss-@N@/hx-trigger=load>",
    "{{7*7}}${7*7}<img/src=@C@>",
    "<svg/onload=alert(@N@)>",
    "</title></textarea><script>__xss(@N@)</script>",
]


def canary_url(n: int) -> str:
    return f"{CANARY_ORIGIN}/xss-{n}"


def _fill(template: str, n: int) -> str:
    return template.replace("@C@", canary_url(n)).replace("@N@", str(n))


PAYLOADS = [_fill(t, n) for n, t in enumerate(TEMPLATES, start=1)]
PATH_PAYLOADS = [_fill(t, n) for n, t in enumerate(PATH_TEMPLATES, start=101)]
assert all(len(p) <= 80 for p in PAYLOADS + PATH_PAYLOADS)


def plain(text: str) -> bool:
    """Whether a model name may hold `text` (names refuse control and formatting characters)."""
    import unicodedata

    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def literal_forms(text: str) -> set[str]:
    """How `text` may legitimately be shown: as is, or quoted inside JSON or a Python repr (the
    audit trail, batch metadata and batch errors show values that way)."""
    return {
        text,
        json.dumps(text, ensure_ascii=False)[1:-1],
        json.dumps(text)[1:-1],
        repr(text)[1:-1],
    }


# ---------------------------------------------------------------------------------------------
# The instrumented browser


MARKER_SCRIPT = """
window.__xss = function (id) { console.log("XSS-MARK " + id); };
"""

# Everything in the DOM that only injected markup could have put there. `admin` relaxes the rules
# for the Django admin's own markup (inline SVG icons).
DOM_CHECK = r"""
([origin, admin]) => {
  const bad = [];
  const TEXT_ATTRS = new Set(["value", "title", "aria-label", "placeholder", "alt"]);
  const URL_ATTRS = new Set(["href", "src", "action", "formaction", "data", "poster",
                             "background", "xlink:href", "srcset", "ping", "codebase"]);
  const BANNED = new Set(["iframe", "frame", "frameset", "object", "embed", "applet", "base",
                          "math", "marquee", "video", "audio", "source", "portal", "mglyph"]);
  const describe = (el) => el.localName + (el.id ? "#" + el.id : "");
  for (const el of document.querySelectorAll("*")) {
    const tag = el.localName;
    if (BANNED.has(tag)) bad.push("element <" + describe(el) + ">");
    if (tag === "meta" && el.hasAttribute("http-equiv")) bad.push("meta http-equiv");
    if (tag === "script") {
      const src = el.getAttribute("src") || "";
      if (!(src.startsWith("/static/") || (admin && src.startsWith("/admin/jsi18n/")))) {
        bad.push("script src=" + src + " " + el.textContent.slice(0, 60));
      }
    }
    if (tag === "img" && !(el.getAttribute("src") || "").startsWith("/static/")) {
      bad.push("img src=" + el.getAttribute("src"));
    }
    if (tag === "style" && !admin) bad.push("style element " + el.textContent.slice(0, 60));
    if (tag === "svg" && !admin && !(el.matches("svg.sparkline") || el.closest("figure.chart"))) {
      bad.push("svg " + el.outerHTML.slice(0, 60));
    }
    if (tag === "animate" || tag === "set" || tag === "foreignobject") bad.push("svg " + tag);
    for (const attr of el.attributes) {
      const name = attr.name.toLowerCase();
      const value = attr.value;
      if (name.startsWith("on")) bad.push(name + " on <" + describe(el) + ">");
      if (name.startsWith("hx-on") || name.startsWith("data-hx-on")) bad.push(name);
      if (name === "srcdoc") bad.push("srcdoc on <" + describe(el) + ">");
      if (name === "style" && /url\(|expression|__xss/i.test(value)) bad.push("style=" + value);
      if (/xss/i.test(name)) bad.push("attribute " + name);
      if (URL_ATTRS.has(name)) {
        const v = value.trim().toLowerCase();
        if (v.startsWith("javascript:") || v.startsWith("vbscript:")) bad.push(name + "=" + value);
        if (v.startsWith("data:") && !(tag === "link" && v === "data:,")) bad.push(name + "=" + value);
        try {
          const url = new URL(value, location.href);
          if (url.protocol.startsWith("http") && url.origin !== origin) bad.push(name + "=" + value);
        } catch (e) { /* not a URL */ }
      }
      // The payloads' markers (a random nonce may well contain the letters "xss").
      const marked = /__xss|\/xss-/.test(value) || (name === "id" && /^xss\d/.test(value));
      if (marked && !TEXT_ATTRS.has(name)) {
        bad.push(name + "=" + value.slice(0, 80) + " on <" + describe(el) + ">");
      }
    }
  }
  if (document.baseURI !== location.href) bad.push("document.baseURI " + document.baseURI);
  return bad;
}
"""

# The text a person sees on the page: text nodes (the title and option labels included), the
# values of form fields and the tooltips.
PAGE_TEXT = r"""
() => {
  const parts = [document.documentElement.textContent];
  for (const el of document.querySelectorAll("input, textarea, select")) parts.push(el.value);
  for (const el of document.querySelectorAll("[title]")) parts.push(el.getAttribute("title"));
  return parts.join("\n");
}
"""


@dataclass
class Tally:
    """What G10 counts, over the tests of this module."""

    payloads: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    pages: set[str] = field(default_factory=set)  # kinds of page (URL patterns)
    checks: int = 0  # page loads and htmx swaps checked
    placements: int = 0  # (payload, field) pairs seeded and found as text on a page
    refused: int = 0  # (payload, field) pairs the validation refused
    executions: int = 0
    dialogs: int = 0
    unexpected_requests: int = 0

    def record(self) -> None:
        record(
            "G10",
            payloads=len(self.payloads),
            fields=len(self.fields),
            field_names=sorted(self.fields),
            pages=len(self.pages),
            page_kinds=sorted(self.pages),
            page_checks=self.checks,
            placements=self.placements,
            refused_by_validation=self.refused,
            executions=self.executions,
            dialogs=self.dialogs,
            unexpected_requests=self.unexpected_requests,
        )


TALLY = Tally()


@dataclass
class Probe:
    """A signed-in browser page that notices anything an injected payload could do."""

    web: Web
    live_url: str
    marks: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @property
    def page(self) -> Page:
        return self.web.page

    def settle(self) -> None:
        """Let queued events (image errors, focus, toggles, animations) fire before checking."""
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")

    def check(self, where: str, *, admin: bool = False) -> str:
        """No payload ran and none became markup; the page's text for `expect_text`."""
        self.settle()
        TALLY.pages.add(page_kind(self.page.url))
        TALLY.checks += 1
        bad = self.page.evaluate(DOM_CHECK, [self.live_url, admin])
        assert not bad, f"{where}: injected markup in the DOM: {bad[:10]}"
        self.assert_quiet(where)
        return self.page.evaluate(PAGE_TEXT)

    def assert_quiet(self, where: str) -> None:
        assert not self.marks, f"{where}: injected script ran: {self.marks}"
        assert not self.dialogs, f"{where}: a dialog opened: {self.dialogs}"
        assert not self.requests, f"{where}: unexpected requests: {self.requests}"
        assert not self.web.page_errors, f"{where}: page errors: {self.web.page_errors}"

    def visit(self, path: str, *, admin: bool = False) -> str:
        response = self.page.goto(self.web.url(path))
        assert response is not None and response.status == 200, (path, response)
        return self.check(path[:100], admin=admin)


def page_kind(url: str) -> str:
    """The URL pattern of a page: its path with ids, model ids and payload orgs generalised."""
    path = urlpath(url)
    path = re.sub(r"/models/(edit|delete)/.+", r"/models/\1/<model>", path)
    path = re.sub(r"^/orgs/[^/]+/", "/orgs/<org>/", path)
    return re.sub(r"/\d+/", "/<n>/", path)


def urlpath(url: str) -> str:
    """The path of `url`, without its query."""
    return httpx.URL(url).path


@pytest.fixture
def probe(
    browser: BrowserSession, live_url: str, transactional_db: Any, _gateway_state: None
) -> Iterator[Probe]:
    with browser.active():
        expect.set_options(timeout=TIMEOUT_MS)
        context = browser.browser.new_context(base_url=live_url, viewport=VIEWPORT, bypass_csp=True)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(MARKER_SCRIPT)
        page = context.new_page()
        probe = Probe(Web(context, page, live_url), live_url)

        def on_request(request: Any) -> None:
            url = request.url
            if url.startswith(("data:", "about:", "blob:")):
                return
            if not url.startswith(live_url + "/") or urlpath(url).startswith("/xss-"):
                probe.requests.append(f"{request.method} {url}")

        def on_dialog(dialog: Any) -> None:
            probe.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        def on_console(message: Any) -> None:
            if "XSS-MARK" in message.text:
                probe.marks.append(message.text)

        def answer_canary(route: Route) -> None:
            route.fulfill(status=204, body="")

        context.route(f"{live_url}/static/**", _serve_static)
        context.route(re.compile(r"^http://127\.0\.0\.1:\d+/xss-.*"), answer_canary)
        context.on("request", on_request)
        context.on("console", on_console)
        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: probe.web.page_errors.append(str(error)))
        try:
            yield probe
            probe.settle()
            probe.assert_quiet("at the end")
        finally:
            TALLY.executions += len(probe.marks)
            TALLY.dialogs += len(probe.dialogs)
            TALLY.unexpected_requests += len(probe.requests)
            TALLY.record()
            context.close()


def expect_text(where: str, text: str, shown: dict[str, str]) -> None:
    """Each value (`{field: value}`) appears as literal text in `text`."""
    for name, value in shown.items():
        assert any(form in text for form in literal_forms(value)), (
            f"{where}: {name} is not shown as text: {value!r}"
        )
        TALLY.placements += 1
        TALLY.fields.add(name.split("#")[0])
        TALLY.payloads.update(p for p in PAYLOADS + PATH_PAYLOADS if p in value)


# ---------------------------------------------------------------------------------------------
# Seeding (services and the API)


def definition(model_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid definition with no upstream auth (the shared model_body, adjusted)."""
    return model_body(model_id, **{**{"auth": {"type": "none"}, "rpm": 6000}, **overrides})


def seed_payload_models(team: Team) -> dict[str, dict[str, str]]:
    """One model per payload, with the payload in every free-text field that accepts it.
    Returns {model id: {field: payload}}."""
    from orgs.errors import InvalidRequest

    seeded: dict[str, dict[str, str]] = {}
    with orm():
        for n, payload in enumerate(PAYLOADS, start=1):
            model_id = f"acme:p{n:02d}"
            names = {
                "model.displayName": payload,
                "model.publicName": payload,
                "model.provider": payload,
                "model.modelId": payload,
            }
            body = definition(
                model_id,
                displayName=payload,
                publicName=payload,
                provider=payload,
                modelId=payload,
                capabilities={
                    "modalities": {"input": ["text"], "output": ["text"]},
                    "reasoning": False,
                    "supportedBase64Formats": [payload],
                },
            )
            if not plain(payload):
                # Names refuse formatting characters (RTL overrides): the model is refused.
                with pytest.raises(InvalidRequest, match="formatting characters"):
                    add_model(team.org, body, actor="user:alice")
                TALLY.refused += len(names)
                for name in names:
                    body.pop(name.split(".")[1])
                body.update(provider="openai-compatible", modelId="chat-1")
            add_model(team.org, body, actor="user:alice")
            fields = {k: v for k, v in names.items() if body.get(k.split(".")[1]) == payload}
            fields["model.supportedBase64Formats"] = payload
            seeded[model_id] = fields
    return seeded


def seed_path_models(team: Team, upstream: UpstreamServer) -> dict[str, str]:
    """Models whose base URL path holds a payload: the upstream answers 404 and quotes the
    path, so health checks and chat calls fail with the payload in their error text."""
    seeded = {}
    with orm():
        for n, payload in enumerate(PATH_PAYLOADS, start=1):
            model_id = f"acme:u{n:02d}"
            add_model(
                team.org,
                definition(model_id, baseUrl=f"{upstream.url}/{payload}/v1", modelId="gpt"),
                actor="user:alice",
            )
            seeded[model_id] = payload
    return seeded


def seed_keys(team: Team) -> list[tuple[str, str]]:
    """An admin API key per payload, named with it: [(raw token, name)]."""
    with orm():
        return [
            (issue_api_key(team.org, role=Role.ADMIN, name=payload, actor="user:alice")[1], payload)
            for payload in PAYLOADS
        ]


def api(client: httpx.Client, token: str, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    response = client.request(method, API + path, headers=headers, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text[:300])
    return response.json()


def on_behalf_of(user: str) -> dict[str, bytes]:
    return {"X-On-Behalf-Of": user.encode()}  # UTF-8 on the wire, as clients send it


def sign_in_root(probe: Probe, team: Team) -> None:
    """The superuser: admin of every org (so the org switcher lists them all) and staff."""
    with orm():
        team.root.is_staff = True
        team.root.save(update_fields=["is_staff"])
    probe.web.sign_in(team.root, f"{ORG}/keys")
    probe.check("sign-in")


# ---------------------------------------------------------------------------------------------
# Org names, models, keys, health errors and the audit trail


def test_names_render_as_text_on_every_page(
    team: Team, probe: Probe, upstream: UpstreamServer, http: httpx.Client
) -> None:
    with orm():
        orgs = {f"org-p{n:02d}": p for n, p in enumerate(PAYLOADS, start=1)}
        for slug, name in orgs.items():
            create_org(slug, name, actor="user:root")
    models = seed_payload_models(team)
    path_models = seed_path_models(team, upstream)
    keys = seed_keys(team)
    admin_token = keys[0][0]
    for model_id in path_models:  # the health check fails with the payload in its error
        result = api(http, admin_token, "POST", f"/models/registry/{model_id}/health")
        assert result["is_available"] is False and "HTTP 404" in result["error"], result
    shown_models = {f"{k}#{i}": v for i, f in enumerate(models.values()) for k, v in f.items()}
    names = {
        f"model.displayName#{i}": f["model.displayName"]
        for i, f in enumerate(models.values())
        if "model.displayName" in f
    }
    health_errors = {f"upstream.healthError#{m}": p for m, p in path_models.items()}
    org_names = {f"org.name#{slug}": name for slug, name in orgs.items()}
    key_names = {f"apiKey.name#{i}": name for i, (_, name) in enumerate(keys)}

    sign_in_root(probe, team)
    page = probe.page

    # Models: the list (two pages), its htmx search, and every edit form.
    text = probe.visit(f"{ORG}/models") + probe.visit(f"{ORG}/models?page=2")
    expect_text("models", text, {**names, **health_errors, **org_names})
    page.get_by_role("searchbox").fill("onerror")  # the table is swapped in by htmx
    expect(page).to_have_url(re.compile(r"q=onerror"))
    expect(page.locator("#model-table tbody tr").first).to_be_visible()
    text = probe.check("models search")
    expect_text("models search", text, {"model.displayName": PAYLOADS[1]})
    for model_id, fields in models.items():
        text = probe.visit(f"{ORG}/models/edit/{model_id}")
        expect_text(f"edit {model_id}", text, fields)
    for model_id, payload in path_models.items():
        text = probe.visit(f"{ORG}/models/edit/{model_id}")
        expect_text(f"edit {model_id}", text, {"model.baseUrl": payload})

    # "Test connection" swaps the probe's error (with the path payload) into the form.
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#test-result .result-bad")).to_contain_text("HTTP 404")
    text = probe.check("test connection")
    expect_text("test connection", text, {"upstream.testError": PATH_PAYLOADS[-1]})

    # Auto models: every model's name in the selects' options.
    text = probe.visit(f"{ORG}/auto")
    expect_text("auto", text, names)

    # Health: the error text of every failed probe, and "Check now" swapping a row in.
    text = probe.visit(f"{ORG}/health") + probe.visit(f"{ORG}/health?page=2")
    expect_text("health", text, health_errors)
    row = page.get_by_role("row").filter(has_text="acme:u08")  # on the second page
    row.get_by_role("button", name="Check now").click()
    expect(row.locator(".badge-bad")).to_have_text("down")
    text = probe.check("health check now")
    expect_text("health check now", text, {"upstream.healthError": PATH_PAYLOADS[7]})

    # API keys, and the revoke dialog htmx loads into the page.
    text = probe.visit(f"{ORG}/keys")
    expect_text("keys", text, key_names)
    for index in (0, 2, 8, 13, 14):
        row = page.get_by_role("row").filter(has_text=keys[index][1]).first
        row.get_by_role("link", name="Revoke").click()
        expect(page.locator("#modal [role=dialog]")).to_be_visible()
        text = probe.check("revoke dialog")
        expect_text("revoke dialog", text, {"apiKey.name": keys[index][1]})
        page.keyboard.press("Escape")
        expect(page.locator("#modal [role=dialog]")).to_have_count(0)

    # The audit trail: model definitions, key names, and its htmx filter.
    text = "".join(probe.visit(f"{ORG}/activity?page={n}") for n in (1, 2, 3))
    audit = {f"audit.changes ({k.split('#')[0]})#{k}": v for k, v in shown_models.items()}
    audit.update({f"audit.changes (apiKey.name)#{k}": v for k, v in key_names.items()})
    expect_text("activity", text, audit)
    page.get_by_label("Org", exact=True).select_option("*")  # every org's events
    expect(page).to_have_url(re.compile(r"org=(\*|%2A)"))
    page.get_by_label("Kind").select_option("org.created")
    expect(page).to_have_url(re.compile(r"action=org.created"))
    expect(page.locator("#activity-panel tbody tr")).to_have_count(len(orgs) + 2)
    text = probe.check("activity filter")
    expect_text(
        "activity filter", text, {f"audit.changes (org.name)#{k}": v for k, v in org_names.items()}
    )

    # Grants: every org by name (two pages), and a grant toggled in place.
    text = probe.visit("/grants") + probe.visit("/grants?page=2")
    expect_text("grants", text, org_names)
    page.locator("#grant-row-org-p48").get_by_role("button", name="grant cluster:chat-a").click()
    expect(page.locator("#grant-row-org-p48 td.num")).to_have_text("1/5")
    probe.check("grant toggled")

    # An org's name in its pages' <title> and header: the payloads aimed at those contexts.
    for n in (1, 3, 13, 15, 16, 22, 33, 41):
        slug, name = f"org-p{n:02d}", PAYLOADS[n - 1]
        text = probe.visit(f"/orgs/{slug}/auto")
        assert page.title().startswith(f"Auto models · {name}"), (slug, page.title())
        expect_text(slug, text, {"org.name": name})
    TALLY.fields.add("org.name (title)")

    # The Django admin's lists and change forms of the same objects.
    for path, shown in (
        ("/admin/orgs/org/", org_names),
        ("/admin/orgs/apikey/", key_names),
        ("/admin/orgs/auditevent/", {}),
        (
            "/admin/registry/registrymodel/",
            {k: v for k, v in shown_models.items() if ".provider" in k},
        ),
        ("/admin/registry/healthstatus/", health_errors),
    ):
        text = probe.visit(path, admin=True)
        expect_text(path, text, shown)
    with orm():
        from orgs.models import ApiKey, AuditEvent, Org
        from registry.models import RegistryModel

        change_forms = [
            *(f"/admin/orgs/org/{o.pk}/change/" for o in Org.objects.filter(slug__in=orgs)[:2]),
            *(f"/admin/orgs/apikey/{k.pk}/change/" for k in ApiKey.objects.all()[:2]),
            *(
                f"/admin/registry/registrymodel/{m.pk}/change/"
                for m in RegistryModel.objects.filter(registry_id__startswith="acme:p")[:2]
            ),
            *(
                f"/admin/orgs/auditevent/{e.pk}/change/"
                for e in AuditEvent.objects.filter(action="model.added")[:2]
            ),
        ]
    for path in change_forms:
        probe.visit(path, admin=True)


# ---------------------------------------------------------------------------------------------
# End users, usage, batches and files


def test_end_users_batches_and_files_render_as_text(
    team: Team,
    probe: Probe,
    upstream: UpstreamServer,
    http: httpx.Client,
    settings: Any,
    tmp_path: Any,
) -> None:
    from batches import runner
    from batches.models import Batch, BatchStatus
    from gateway import usage

    if Path(settings.MEDIA_ROOT) == Path(settings.VAR_DIR) / "media":
        # (Left alone when the session shares its storage with a batch worker: that worker may
        # then take these batches from the queue, and must be able to read their files.)
        settings.MEDIA_ROOT = str(tmp_path / "media")
    with orm():
        add_model(
            team.org,
            definition("acme:echo", baseUrl=f"{upstream.url}/v1", modelId="echo"),
            actor="user:alice",
        )
    keys = seed_keys(team)
    files: dict[str, str] = {}  # file id → stored name
    for n, (token, payload) in enumerate(keys, start=1):
        headers = on_behalf_of(payload)
        # A change made for an end user: the audit trail's actor is "<end user> via key:…".
        api(
            http,
            token,
            "PATCH",
            "/models/registry/acme:echo",
            headers=headers,
            json={"displayName": f"Echo {n}"},
        )
        api(
            http,
            token,
            "POST",
            "/chat/completions",
            headers=headers,
            json={"model": "acme:echo", "messages": [{"role": "user", "content": payload}]},
        )
        # A batch file whose custom_id (the payload) is used twice: validation fails, quoting it.
        line = {
            "custom_id": payload,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "acme:echo", "messages": [{"role": "user", "content": "hi"}]},
        }
        content = (json.dumps(line) + "\n").encode() * 2
        uploaded = api(
            http,
            token,
            "POST",
            "/files",
            headers=headers,
            data={"purpose": "batch"},
            files={"file": (f"{payload}.jsonl", content, "application/jsonl")},
        )
        files[uploaded["id"]] = uploaded["filename"]
        api(
            http,
            token,
            "POST",
            "/batches",
            headers=headers,
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"note": payload, payload[:64]: f"key {n}"},
            },
        )
    with orm():
        usage.flush()
    # What a worker does with each batch: its validation fails. A batch a worker of this test
    # session holds is "busy" here; it is done once that worker lets it go.
    deadline = time.monotonic() + 30
    while True:
        with orm():
            active = Batch.objects.filter(org=team.org).exclude(status=BatchStatus.FAILED)
            for pk in active.values_list("pk", flat=True):
                runner.run_batch(pk)
            left = list(active.values_list("public_id", "status"))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"batches not failed: {left}"
    end_users = {f"endUser#{i}": p for i, p in enumerate(PAYLOADS)}
    key_names = {f"apiKey.name#{i}": p for i, p in enumerate(PAYLOADS)}
    file_names = {f"file.name#{i}": name for i, name in enumerate(files.values())}
    metadata = {f"batch.metadata#{i}": p for i, p in enumerate(PAYLOADS)}
    metadata_keys = {f"batch.metadataKey#{i}": p[:64] for i, p in enumerate(PAYLOADS)}
    batch_errors = {f"batch.error#{i}": p for i, p in enumerate(PAYLOADS)}

    sign_in_root(probe, team)
    page = probe.page

    # Usage per end user and per API key (whole pages and htmx swaps).
    text = probe.visit(f"{ORG}/usage?group=user")
    expect_text("usage per end user", text, end_users)
    page.get_by_role("navigation", name="Per").get_by_role("link", name="per API key").click()
    expect(page.get_by_role("heading", name="Requests per API key")).to_be_visible()
    text = probe.check("usage per key")
    expect_text("usage per key", text, key_names)
    page.get_by_role("navigation", name="Chart").get_by_role("link", name="Tokens").click()
    expect(page.get_by_role("heading", name="Tokens per API key")).to_be_visible()
    probe.check("usage tokens per key")
    text = probe.visit(f"{ORG}/usage?group=user&metric=tokens&period=7d")
    expect_text("usage tokens per user", text, {"endUser": PAYLOADS[0]})

    # Batches: file names, end users, metadata and validation errors.
    text = probe.visit(f"{ORG}/batches")
    expect_text(
        "batches", text, {**file_names, **end_users, **metadata, **metadata_keys, **batch_errors}
    )
    expect(page.locator("#batch-table tbody tr")).to_have_count(len(PAYLOADS))
    assert text.count("is not unique in the file") == len(PAYLOADS)

    # Files: names and end users; an upload through the page; the delete dialog.
    text = probe.visit(f"{ORG}/files")
    expect_text("files", text, {**file_names, **end_users})
    upload_name = PAYLOADS[1] + ".jsonl"
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "acme:echo", "messages": [{"role": "user", "content": "hi"}]},
    }
    page.get_by_label("File", exact=True).set_input_files(
        files=[
            {
                "name": upload_name,
                "mimeType": "application/jsonl",
                "buffer": (json.dumps(line) + "\n").encode(),
            }
        ]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("Uploaded")
    text = probe.check("file uploaded")
    expect_text("file uploaded", text, {"file.name (upload)": upload_name})
    for file_id in list(files)[:5]:
        page.locator(f"#file-{file_id}").get_by_role("link", name="Delete").click()
        expect(page.locator("#modal [role=dialog]")).to_be_visible()
        text = probe.check("file delete dialog")
        expect_text("file delete dialog", text, {"file.name": files[file_id]})
        page.keyboard.press("Escape")

    # The audit trail's actors, and the auto-model override's "set by".
    text = probe.visit(f"{ORG}/activity") + probe.visit(f"{ORG}/activity?page=2")
    expect_text("activity", text, {f"audit.actor#{i}": p for i, p in enumerate(PAYLOADS)})
    for index in (0, 2, 3, 8):
        token, payload = keys[index]
        api(
            http,
            token,
            "PUT",
            "/models/auto/completions",
            headers=on_behalf_of(payload),
            json={"modelId": "acme:echo"},
        )
        text = probe.visit(f"{ORG}/auto")
        expect_text("auto", text, {"autoModel.setBy": payload})

    # The Django admin's lists of the same objects.
    for path, shown in (
        ("/admin/batches/file/", {**file_names, **end_users}),
        ("/admin/batches/batch/", end_users),
        ("/admin/orgs/auditevent/", {f"audit.actor#{i}": p for i, p in enumerate(PAYLOADS)}),
        ("/admin/registry/automodel/", {"autoModel.setBy": keys[8][1]}),
    ):
        text = probe.visit(path, admin=True)
        expect_text(path, text, shown)
    with orm():
        first = Batch.objects.filter(org=team.org).first()
        assert first is not None
        batch_change = f"/admin/batches/batch/{first.pk}/change/"
    probe.visit(batch_change, admin=True)


# ---------------------------------------------------------------------------------------------
# The playground: model output, the user's own text, and upstream errors (W2)


def send(page: Page, model: str, message: str) -> Any:
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Message").fill(message)
    before = page.locator(".pg-answer").count()
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".pg-answer").nth(before)
    expect(answer).not_to_have_class(re.compile(r"\bis-streaming\b"))
    return answer


def test_playground_output_and_errors_render_as_text(
    team: Team, probe: Probe, upstream: UpstreamServer
) -> None:
    models = seed_payload_models(team)
    path_models = seed_path_models(team, upstream)
    with orm():
        add_model(
            team.org,
            definition("acme:echo", baseUrl=f"{upstream.url}/v1", modelId="echo"),
            actor="user:alice",
        )
    sign_in_root(probe, team)
    page = probe.page
    text = probe.visit(f"{ORG}/playground")
    names = {
        f"model.displayName#{m}": f["model.displayName"]
        for m, f in models.items()
        if "model.displayName" in f
    }
    expect_text("playground models", text, names)

    # The echo model answers with the JSON of the request it got: every payload comes back as
    # model output, streamed in as SSE tokens.
    message = " || ".join(PAYLOADS)
    answer = send(page, "acme:echo", message)
    expect(answer.locator(".pg-stats")).to_contain_text("First token")
    text = probe.check("playground answer")
    output = answer.locator(".pg-text").text_content() or ""
    expect_text(
        "playground answer", output, {f"modelOutput#{i}": p for i, p in enumerate(PAYLOADS)}
    )
    user_text = page.locator(".pg-user .pg-text").last.text_content() or ""
    assert user_text == message  # the prompt, as text
    TALLY.fields.add("playground.userMessage")
    # Tokens are text in plain <span>s: no other element came out of the stream.
    children = answer.locator(".pg-text").evaluate(
        "el => [...el.querySelectorAll('*')].map(c => c.localName + c.attributes.length)"
    )
    assert set(children) <= {"span0"}, children

    # The next turn posts the conversation (the answer kept in a hidden field) back intact.
    second = send(page, "acme:echo", "and again")
    expect(second.locator(".pg-stats")).to_contain_text("First token")
    probe.check("playground second turn")
    history = upstream.requests()[-1]["body"]["messages"]
    assert history[0] == {"role": "user", "content": message}
    assert history[1]["role"] == "assistant" and history[1]["content"] == output

    # Upstream errors quoting a payload (the 404 names the requested path).
    for model_id, payload in path_models.items():
        answer = send(page, model_id, "hello")
        expect(answer.locator(".pg-error")).to_contain_text("HTTP 404")
        text = probe.check(f"playground error {model_id}")
        error = answer.locator(".pg-error").text_content() or ""
        expect_text(f"playground error {model_id}", error, {"upstream.chatError": payload})


def test_a_canary_would_be_caught(team: Team, probe: Probe) -> None:
    """The instruments work: markup that does run is noticed by each of them."""
    sign_in_root(probe, team)
    page = probe.page
    page.evaluate(
        """n => {
            const box = document.createElement("div");
            box.innerHTML = `<img src=x onerror=__xss(${n})><img src="CANARY">`;
            document.body.appendChild(box);
            setTimeout(() => alert(n), 0);
        }""".replace("CANARY", canary_url(999)),
        999,
    )
    deadline = time.monotonic() + 5
    while not (probe.marks and probe.requests and probe.dialogs) and time.monotonic() < deadline:
        probe.settle()
    assert probe.marks == ["XSS-MARK 999"]
    assert probe.requests == [f"GET {canary_url(999)}"]
    assert probe.dialogs == ["alert: 999"]
    bad = page.evaluate(DOM_CHECK, [probe.live_url, False])
    assert any("onerror" in b for b in bad) and any(canary_url(999) in b for b in bad), bad
    probe.marks.clear()
    probe.requests.clear()
    probe.dialogs.clear()


# ---------------------------------------------------------------------------------------------
# Typed input echoed back: form errors and query parameters


def chunks(texts: list[str], limit: int = 200) -> list[str]:
    """`texts` joined by spaces into strings of at most `limit` characters."""
    out = [""]
    for text in texts:
        joined = f"{out[-1]} {text}" if out[-1] else text
        if len(joined) <= limit:
            out[-1] = joined
        else:
            out.append(text)
    return out


def test_typed_input_and_query_parameters_render_as_text(team: Team, probe: Probe) -> None:
    page = probe.page
    # Signed out: the login form keeps `next` in a hidden field; signing in does not follow a
    # javascript: URL.
    # A local URL is kept ('#' would start a fragment, which Django's check refuses here).
    everything = f"{ORG}/models?q=" + " ".join(p for p in PAYLOADS if "#" not in p)
    text = probe.visit(f"/login?next={quote(everything)}")
    expect_text("login next", text, {"login.next": everything})
    page.goto(probe.web.url(f"/login?next={quote(PAYLOADS[5])}"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert page.url.startswith(probe.live_url + "/"), page.url
    probe.check("signed in with a javascript: next")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(probe.web.url("/login"))

    sign_in_root(probe, team)
    # Search boxes and filters put the typed text back into the page (and into its links).
    for n, chunk in enumerate(chunks([p for p in PAYLOADS if plain(p)])):
        for path in (f"{ORG}/models?q=", "/grants?q=", f"{ORG}/activity?actor="):
            text = probe.visit(path + quote(chunk))
            expect_text(path, text, {f"query.{path.split('?')[1][:-1]}#{n}": chunk})

    # The model form: typed values come back into the fields when the form is refused.
    page.goto(probe.web.url(f"{ORG}/models/new"))
    typed = {
        "#id_display_name": PAYLOADS[0],
        "#id_provider": PAYLOADS[2],
        "#id_model_id": PAYLOADS[3],
        "#id_public_name": PAYLOADS[13],
        "#id_base_url": PAYLOADS[14],
        "#id_base64_formats": PAYLOADS[16],
    }
    page.locator("#id_id").fill("acme:typed")
    for selector, value in typed.items():
        page.locator(selector).fill(value)
    page.locator("#id_auth_type").select_option("custom-headers")
    page.locator("#id_auth_headers").fill(f"{PAYLOADS[1]}: v")
    page.locator("details.section > summary").click()
    rule = [{"trigger": {"type": "error-fallback"}, "targetModelId": PAYLOADS[21]}]
    page.locator("#id_reroute_rules").fill(json.dumps(rule))
    page.get_by_role("button", name="Add model").click()
    expect(page.locator("#model-form .form-errors")).to_be_visible()
    text = probe.check("model form refused")
    expect_text("model form refused", text, {f"form.typed{k}": v for k, v in typed.items()})
    errors = page.locator("#model-form").evaluate(ERROR_TEXT)
    expect_text("model form errors", errors, {"form.error (header name)": PAYLOADS[1]})

    # Once the rest is valid, the reroute rule's unknown target is named in the error.
    page.locator("#id_base_url").fill("https://models.example.com/v1")
    page.locator("#id_auth_headers").fill("X-Key: v")
    if not page.locator("#id_reroute_rules").is_visible():
        page.locator("details.section > summary").click()
    page.locator("#id_reroute_rules").fill(json.dumps(rule))
    page.get_by_role("button", name="Add model").click()
    expect(page.locator("#model-form")).to_contain_text("is not available to this org")
    probe.check("model form refused again")
    errors = page.locator("#model-form").evaluate(ERROR_TEXT)
    expect_text("model form errors", errors, {"form.error (reroute target)": PAYLOADS[21]})


ERROR_TEXT = "el => [...el.querySelectorAll('.error, .form-errors')].map(e => e.textContent).join()"
