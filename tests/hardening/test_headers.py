"""Security headers, CSRF, error feedback and redirects of the dashboard and the API (W3, W6, W8,
W9; README "Running in production").

- Every page (whole and as an htmx fragment, error pages and the Django admin included) carries a
  Content-Security-Policy with a fresh nonce and no 'unsafe-*' source, plus X-Frame-Options,
  nosniff, Referrer-Policy and Cross-Origin-Opener-Policy; HSTS over HTTPS in production. The
  rendered pages contain nothing that policy would block (no inline script, style attribute or
  event handler). The JSON API, served by its own lean handler, sends the same headers with a CSP
  that allows nothing.
- Every URL of the dashboard and a Django admin action refuse a POST without a CSRF token (403,
  nothing changed), and no GET changes anything. The token reaches htmx through JSON
  `hx-headers` on <body>, and that token is accepted.
- A 4xx answer to an htmx request carries a `data-error-message` that static/app.js shows.
- `next` (sign-in, sign-out) and the org switcher never send anyone off-site.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from batches import services as batch_services
from batches.models import Batch, BatchStatus, File
from dashboard.security import API_CSP
from orgs.auth import Caller
from orgs.models import ApiKey, AuditEvent, Membership, Role
from orgs.services import create_org, issue_api_key
from registry.models import AutoModel, ClusterGrant, RegistryModel
from registry.services import add_model
from tests.conftest import auth, model_body
from tests.hardening.figures import load_all, record
from tests.upstream_server import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
HTMX = {"HX-Request": "true"}
PASSWORD = "correct horse battery staple 42"
ORG = "/orgs/org-acme"
EVIL_NEXT = [
    "https://evil.example/",
    "http://evil.example",
    "//evil.example/x",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "https:evil.example",
    "javascript:alert(1)",
    " javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http://testserver@evil.example/",
]
CSRF_MESSAGE = b"The security token of this form was missing or out of date"

_checked = {"pages": 0, "api": 0}  # headers asserted, for goal G9


def record_headers(kind: str, **extra: Any) -> None:
    """G9's headers_checked: the page and API counts of the latest run of each test."""
    counts = load_all().get("G9", {})
    counts[f"headers_checked_{kind}"] = _checked[kind]
    total = counts.get("headers_checked_pages", 0) + counts.get("headers_checked_api", 0)
    record("G9", headers_checked=total, **{f"headers_checked_{kind}": _checked[kind]}, **extra)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def definition(model_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid definition with no upstream auth (the shared model_body, adjusted)."""
    return model_body(
        model_id, **{**{"auth": {"type": "none"}, "baseUrl": "http://127.0.0.1:9/v1"}, **overrides}
    )


@pytest.fixture
def site(db: Any, settings: Any) -> dict[str, Any]:
    """org-acme with a model, a key, a file and a running batch; org-globex; root (superuser),
    alice (acme admin), bob (acme member)."""
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    acme = create_org("org-acme", "Acme")
    create_org("org-globex", "Globex")
    users = get_user_model().objects
    root = users.create_user("root", "root@example.com", PASSWORD, is_superuser=True, is_staff=True)
    alice = users.create_user("alice", "alice@example.com", PASSWORD)
    bob = users.create_user("bob", "bob@example.com", PASSWORD)
    Membership.objects.create(user=alice, org=acme, role=Role.ADMIN)
    Membership.objects.create(user=bob, org=acme, role=Role.MEMBER)
    add_model(acme, definition("acme:chat-1"), actor="test")
    key, _ = issue_api_key(acme, name="a key")
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "acme:chat-1", "messages": [{"role": "user", "content": "hi"}]},
    }
    upload = SimpleUploadedFile("in.jsonl", (json.dumps(line) + "\n").encode(), "application/jsonl")
    file = batch_services.create_file(Caller(org=acme, role=Role.ADMIN), upload, "batch")
    batch = Batch.objects.create(
        org=acme,
        input_file=file,
        endpoint="/v1/chat/completions",
        status=BatchStatus.IN_PROGRESS,
        total=1,
        expires_at=timezone.now() + timedelta(hours=24),
    )
    return {
        "root": root,
        "alice": alice,
        "bob": bob,
        "key_id": key.pk,
        "file_id": file.public_id,
        "batch_id": batch.public_id,
    }


def client_for(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


def snapshot() -> tuple[Any, ...]:
    return (
        list(RegistryModel.objects.values_list("registry_id", "definition", "updated_at")),
        list(ApiKey.objects.values_list("prefix", "revoked_at")),
        list(ClusterGrant.objects.values_list("org_id", "model_id")),
        list(AutoModel.objects.values_list("org_id", "endpoint", "model_id")),
        list(File.objects.values_list("public_id", "bytes")),
        list(Batch.objects.values_list("public_id", "status")),
        AuditEvent.objects.count(),
    )


# ---------------------------------------------------------------------------------------------
# What a page may contain under the policy


def parse_csp(value: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


class _InlineFinder(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, <style> without the nonce, style
    attributes, on* handlers and javascript: URLs."""

    def __init__(self, nonce: str) -> None:
        super().__init__()
        self.nonce = nonce
        self.blocked: list[str] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values)
            if not values.get("src") and values.get("type") not in ("application/json",):
                self.blocked.append(f"inline <script> {values}")
        if tag == "style" and values.get("nonce") != self.nonce:
            self.blocked.append("<style> without the nonce")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.blocked.append(f"<{tag} {name}=…>")
            if name in ("href", "src", "action", "formaction") and (
                value or ""
            ).strip().lower().startswith("javascript:"):
                self.blocked.append(f"<{tag} {name}={value}>")


def assert_page_headers(response: Any, *, ours: bool = True) -> dict[str, list[str]]:
    """The headers every page response carries; returns the parsed CSP."""
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = parse_csp(response["Content-Security-Policy"])
    _checked["pages"] += 5
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"]
    assert csp["form-action"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["connect-src"] == ["'self'"]
    script = csp["script-src"]
    assert (
        script[0] == "'self'"
        and len(script) == 2
        and re.fullmatch(r"'nonce-[\w-]{16,}'", script[1])
    )
    for sources in csp.values():
        assert not any(s.startswith("'unsafe-") or s in ("*", "http:", "https:") for s in sources)
    if response.get("Content-Type", "").startswith("text/html"):
        nonce = script[1][len("'nonce-") : -1]
        body = response.content.decode()
        finder = _InlineFinder(nonce)
        finder.feed(body)
        assert not finder.blocked, finder.blocked
        for tag in finder.scripts if ours else ():  # our script tags carry this nonce
            assert tag.get("nonce") == nonce, tag
    return csp


def page_urls(site: dict[str, Any]) -> list[str]:
    return [
        f"{ORG}/models",
        f"{ORG}/models?q=acme&sort=-id",
        f"{ORG}/models/new",
        f"{ORG}/models/edit/acme:chat-1",
        f"{ORG}/models/delete/acme:chat-1",
        f"{ORG}/auto",
        f"{ORG}/health",
        f"{ORG}/keys",
        f"{ORG}/keys/revoke/{site['key_id']}",
        f"{ORG}/playground",
        f"{ORG}/usage",
        f"{ORG}/activity",
        f"{ORG}/batches",
        f"{ORG}/batches/cancel/{site['batch_id']}",
        f"{ORG}/files",
        f"{ORG}/files/delete/{site['file_id']}",
        "/grants",
    ]


ADMIN_URLS = [
    "/admin/",
    "/admin/orgs/org/",
    "/admin/orgs/apikey/",
    "/admin/registry/registrymodel/",
    "/admin/orgs/auditevent/",
    "/admin/batches/batch/",
    "/admin/registry/registrymodel/cluster-registry/",
]


# ---------------------------------------------------------------------------------------------
# W6: headers on the pages


def test_every_page_has_the_security_headers_and_nothing_the_csp_blocks(site: dict[str, Any]):
    _checked["pages"] = 0
    client = client_for(site["root"])
    nonces = set()
    count = 0
    for url in page_urls(site):
        for headers in ({}, HTMX):
            response = client.get(url, headers=headers)
            assert response.status_code == 200, url
            csp = assert_page_headers(response)
            nonces.add(csp["script-src"][1])
            count += 1
    for url in ADMIN_URLS:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_page_headers(response, ours=False)  # Django's admin: script files, no nonce
        count += 1
    model = RegistryModel.objects.get(registry_id="acme:chat-1")
    response = client.get(f"/admin/registry/registrymodel/{model.pk}/change/")
    assert_page_headers(response, ours=False)
    # Error pages, the sign-in page and a download carry them too.
    anonymous = client_for(None)
    for response in (
        anonymous.get("/login"),
        anonymous.get(f"{ORG}/models"),  # 302 to the sign-in page
        client.get("/orgs/org-nope/models"),  # 404
        client_for(site["bob"]).get(f"{ORG}/keys"),  # 403
        client.get("/logout"),  # 405
    ):
        assert_page_headers(response)
        count += 1
    # A download keeps its stricter policy: the bytes are never a document of this site.
    download = client.get(f"{ORG}/files/content/{site['file_id']}")
    assert download.status_code == 200
    assert download["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["X-Frame-Options"] == "DENY"
    assert len(nonces) == 2 * len(page_urls(site))  # one per response
    record_headers("pages", pages_checked_in_process=count)


def test_the_nonce_is_fresh_for_every_request(site: dict[str, Any]):
    client = client_for(site["alice"])
    seen = {parse_csp(client.get(f"{ORG}/models")["Content-Security-Policy"])["script-src"][1]}
    seen.add(parse_csp(client.get(f"{ORG}/models")["Content-Security-Policy"])["script-src"][1])
    assert len(seen) == 2


def test_templates_have_no_inline_script_style_or_handler():
    """The source of every template: a script is a file with the nonce; no style or on*
    attribute, no <style>, no javascript: URL (the rendered pages are checked above)."""
    offenders = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for match in re.finditer(r"<script\b[^>]*>", text):
            tag = match.group(0)
            if "src=" not in tag or 'nonce="{{ csp_nonce }}"' not in tag:
                offenders.append(f"{path.name}: {tag}")
        for pattern in (r"<style\b", r"\sstyle\s*=", r"\son[a-z]+\s*=", r"javascript:"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text, re.I)]
    assert not offenders, offenders
    config = re.search(
        r"<meta name=\"htmx-config\" content='([^']+)'>", (ROOT / "templates/base.html").read_text()
    )
    assert config is not None
    htmx_config = json.loads(config.group(1))
    # htmx would otherwise add an indicator <style> and evaluate hx-on / js: expressions.
    assert htmx_config["includeIndicatorStyles"] is False
    assert htmx_config["allowEval"] is False
    assert htmx_config["allowScriptTags"] is False


def test_hsts_over_https_in_production(site: dict[str, Any], settings: Any):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = client_for(site["alice"])
    secure = client.get(f"{ORG}/models", headers={"X-Forwarded-Proto": "https"})
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert_page_headers(secure)
    plain = client.get(f"{ORG}/models")
    assert "Strict-Transport-Security" not in plain  # browsers ignore it over plain HTTP anyway


# ---------------------------------------------------------------------------------------------
# W6: headers on the JSON API (the lean ASGI handler, no page middleware)


def assert_api_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == API_CSP
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert "set-cookie" not in response.headers
    _checked["api"] += 5


def test_api_responses_have_the_security_headers(world: Any, http: httpx.Client, settings: Any):
    _checked["api"] = 0
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as upstream:
        add_model(world.org_a, definition("acme:live", baseUrl=f"{upstream.url}/v1"), actor="test")
        chat = {"model": "acme:live", "messages": [{"role": "user", "content": "hi"}]}
        responses = [
            http.get("/api/v1/llm/models", headers=auth(world.alice)),
            http.get("/api/v1/llm/models"),  # 401
            http.get("/api/v1/llm/models/registry", headers=auth(world.bob)),  # 403
            http.get("/api/v1/llm/models/nope:x", headers=auth(world.alice)),  # 404
            http.get("/api/nope"),
            http.post("/api/v1/llm/chat/completions", headers=auth(world.alice), json=chat),
            http.post(
                "/api/v1/llm/chat/completions",
                headers=auth(world.alice),
                content=b"{not json",
            ),
        ]
        with http.stream(
            "POST",
            "/api/v1/llm/chat/completions",
            headers=auth(world.alice),
            json={**chat, "stream": True},
        ) as stream:
            stream.read()
            responses.append(stream)
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200, 401, 403, 404, 404] and statuses[5] == 200
    assert statuses[6] == 415 and statuses[7] == 200
    assert responses[7].headers["content-type"].startswith("text/event-stream")
    for response in responses:
        assert_api_headers(response)
    record_headers("api")


def test_api_hsts_over_https_in_production(settings: Any):
    from dashboard.apihandler import ApiASGIHandler

    settings.SECURE_HSTS_SECONDS = 600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = False
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    transport = httpx.ASGITransport(app=ApiASGIHandler())

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            secure = await client.get("/api/nope", headers={"X-Forwarded-Proto": "https"})
            return secure, await client.get("/api/nope")

    secure, plain = asyncio.run(fetch())
    assert secure.status_code == 404
    assert secure.headers["strict-transport-security"] == "max-age=600; includeSubDomains"
    assert "strict-transport-security" not in plain.headers
    assert_api_headers(secure)


# ---------------------------------------------------------------------------------------------
# W3: CSRF on every mutating request, and GET never mutates


def every_dashboard_url(site: dict[str, Any]) -> list[str]:
    """One concrete URL for every route of dashboard/pages.py (a new route is covered at once)."""
    values = {
        "slug": "org-acme",
        "model_id": "acme:chat-1",
        "endpoint": "completions",
        "key_id": site["key_id"],
        "token": "no-such-token",
        "batch_id": site["batch_id"],
        "file_id": site["file_id"],
    }
    urls = []
    for pattern in get_resolver("dashboard.pages").url_patterns:
        assert isinstance(pattern, URLPattern)
        names = list(pattern.pattern.regex.groupindex)
        urls.append(reverse(f"dashboard:{pattern.name}", kwargs={n: values[n] for n in names}))
    return urls


def _walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for p in patterns:
        if isinstance(p, URLResolver):
            out += _walk(p.url_patterns, prefix + str(p.pattern))
        else:
            out.append((prefix + str(p.pattern), p.callback))
    return out


def test_no_page_or_admin_view_is_csrf_exempt():
    exempt = [
        route
        for route, view in _walk(get_resolver().url_patterns)
        if getattr(view, "csrf_exempt", False) and not route.startswith(("api", "^api"))
    ]
    assert exempt == []


def test_a_post_without_csrf_token_is_refused_everywhere(site: dict[str, Any]):
    urls = every_dashboard_url(site) + ["/login", "/admin/orgs/apikey/", "/admin/logout/"]
    before = snapshot()
    client = client_for(site["root"], enforce_csrf_checks=True)
    data = {
        "name": "k",
        "role": "member",
        "action": "grant",
        "model": "cluster:chat-a",
        "model_id": "acme:chat-1",
        "message": "hi",
        "purpose": "batch",
        "input_file": site["file_id"],
        "username": "root",
        "password": PASSWORD,
        "_selected_action": str(site["key_id"]),
        "index": "0",
    }
    for url in urls:
        for headers in ({}, HTMX, {**HTMX, "X-CSRFToken": "forged-token-forged-token-forged-12"}):
            response = client.post(url, data, headers=headers)
            assert response.status_code == 403, url
            assert CSRF_MESSAGE in response.content, url  # refused by CSRF, not by the view
            assert b"data-error-message" in response.content
    assert snapshot() == before
    # Still signed in: the refused sign-out did nothing.
    assert client.get(f"{ORG}/models").status_code == 200
    record("G9", csrf_post_urls=len(urls))


def test_get_never_changes_anything(site: dict[str, Any]):
    """Every route, with whatever GET gives (a page, a confirmation, 405, a download), also
    carries the headers: a route added later is covered without editing this test."""
    client = client_for(site["root"])
    before = snapshot()
    for url in every_dashboard_url(site) + ADMIN_URLS:
        for headers in ({}, HTMX):
            response = client.get(url, headers=headers)
            assert response.status_code < 500, url
            if response["Content-Security-Policy"] != "default-src 'none'; sandbox":
                assert_page_headers(response, ours=not url.startswith("/admin/"))
    assert snapshot() == before
    assert client.get(f"{ORG}/models").status_code == 200  # GET /logout did not sign out


def test_the_token_in_hx_headers_is_json_and_is_accepted(site: dict[str, Any]):
    client = client_for(site["root"], enforce_csrf_checks=True)
    page = client.get("/grants").content.decode()
    match = re.search(r"<body hx-headers='([^']+)'>", page)
    assert match is not None
    hx_headers = json.loads(match.group(1))  # plain JSON, no js: expression
    assert set(hx_headers) == {"X-CSRFToken"}
    grant = {"action": "grant", "model": "cluster:chat-a"}
    response = client.post("/grants/org-acme", grant, headers={**HTMX, **hx_headers})
    assert response.status_code == 200
    assert ClusterGrant.objects.filter(org__slug="org-acme", model_id="cluster:chat-a").exists()


# ---------------------------------------------------------------------------------------------
# W8: a 4xx to an htmx request says what went wrong


def test_htmx_errors_carry_a_message_for_the_page(site: dict[str, Any]):
    alice, bob = client_for(site["alice"]), client_for(site["bob"])
    strict = client_for(site["alice"], enforce_csrf_checks=True)
    cases = [
        (alice.get("/orgs/org-globex/models", headers=HTMX), 404),
        (alice.post("/orgs/org-globex/keys", {"role": "member"}, headers=HTMX), 404),
        (bob.post(f"{ORG}/keys", {"name": "x", "role": "member"}, headers=HTMX), 403),
        (bob.post(f"{ORG}/models/delete/acme:chat-1", headers=HTMX), 403),
        (alice.post("/grants/org-acme", {"action": "grant"}, headers=HTMX), 403),
        (strict.post(f"{ORG}/keys/revoke/{site['key_id']}", headers=HTMX), 403),
    ]
    for response, status in cases:
        assert response.status_code == status
        match = re.search(rb"data-error-message>([^<]+)<", response.content)
        assert match is not None and match.group(1).strip(), response.content[:200]
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 0
    # static/app.js turns such answers into a visible alert (the browser test watches it).
    app_js = (ROOT / "static/app.js").read_text()
    assert 'addEventListener("htmx:responseError"' in app_js
    assert "[data-error-message]" in app_js and "textContent" in app_js


# ---------------------------------------------------------------------------------------------
# W9: no open redirect


@pytest.mark.parametrize("evil", EVIL_NEXT)
def test_sign_in_ignores_an_offsite_next(site: dict[str, Any], evil: str):
    anonymous = Client()
    form = anonymous.get("/login", {"next": evil}).content.decode()
    assert 'name="next"' not in form  # an unsafe next is not even carried into the form
    response = anonymous.post(
        "/login?" + httpx.QueryParams({"next": evil}).__str__(),
        {"username": "alice", "password": PASSWORD, "next": evil},
    )
    assert response.status_code == 302 and response["Location"] == "/"
    # Already signed in: /login redirects at once, still not off-site.
    again = anonymous.get("/login", {"next": evil})
    assert again.status_code == 302 and again["Location"] == "/"
    out = anonymous.post("/logout", {"next": evil})
    assert out.status_code == 302 and out["Location"] == "/login"


@pytest.mark.parametrize("evil", EVIL_NEXT)
def test_the_org_switcher_never_leaves_the_site(site: dict[str, Any], evil: str):
    client = client_for(site["root"])
    for params in (
        {"org": "org-globex", "next": evil},
        {"org": "org-globex", "section": evil},
        {"org": "org-globex", "section": "keys", "next": evil},
    ):
        response = client.get("/switch-org", params)
        assert response.status_code == 302
        assert response["Location"].startswith("/orgs/org-globex/"), response["Location"]
    assert client.get("/switch-org", {"org": evil}).status_code == 404


def test_a_safe_next_still_works(site: dict[str, Any]):
    response = Client().post(
        f"/login?next={ORG}/health",
        {"username": "alice", "password": PASSWORD, "next": f"{ORG}/health"},
    )
    assert response["Location"] == f"{ORG}/health"
