"""Tenancy matrix (RELIABILITY.md A4, A11, W4; goal G2): every API route and every dashboard URL
× method × principal, with the expected status of each cell.

Rows come from tables checked against the URL conf (a new route, or a new method on one, without
a row fails `test_every_route_and_method_has_a_row`). The API is called in-process through the
same ASGI application uvicorn serves; pages through Django's test client. After every refused
cell the whole database (and the stored blobs) must be as before; a principal that is not org A's
must never see one of org A's private markers; org B's allowed writes leave org A's rows alone.
Allowed writes that destroy an object (delete, revoke, rename) are followed by a rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from tests.batches.conftest import batch_env  # noqa: F401  (a private broker queue)
from tests.conftest import model_body
from tests.dashboard.conftest import form_data
from tests.hardening.figures import record
from tests.hardening.matrix_asgi import AsgiClient, asgi_client
from tests.hardening.matrix_world import MARKERS, Tenants, build, diff, snapshot, wipe
from tests.upstream_server import UpstreamServer

API = "/api/v1/llm"
ORG = "/orgs/org-acme"

# Who asks. Key principals send `Authorization`; session principals a dashboard session cookie.
PRINCIPALS = (
    "anonymous",
    "a_member_key",
    "a_admin_key",
    "b_admin_key",
    "b_session",
    "a_session",
    "a_member_session",
    "cluster_admin",  # a cluster-admin key (API) and a superuser session (pages)
    "revoked_key",
)
ORG_A = {"a_member_key", "a_admin_key", "a_session", "a_member_session", "cluster_admin"}

client = pytest.fixture(scope="module")(asgi_client)


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # formatted with Tenants.values(); {token} is a fresh playground token
    scope: str  # API: key | admin | cluster; pages: public | member | admin | cluster | owner
    ok: int  # the status of an allowed principal of org A
    b: int | None = None  # org B's status (default: 404 for org scopes, 403 for cluster)
    body: Callable[[str], Any] | None = None  # principal -> JSON body / form data / files
    destructive: bool = False  # an allowed call changes org A's objects: rebuild afterwards
    multipart: bool = False
    signed_in: int | None = None  # public pages: the status for a signed-in user, if different


def chat(principal: str) -> dict[str, Any]:
    return {"model": "acme:chat-1", "messages": [{"role": "user", "content": "hi"}]}


def jsonl_upload(principal: str) -> dict[str, Any]:
    line = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    return {
        "file": SimpleUploadedFile(f"{principal}.jsonl", line, "application/jsonl"),
        "purpose": "batch",
    }


API_ROWS = [
    Row("GET", "/models", "key", 200, b=200),
    Row("GET", "/models/{model}", "key", 200),
    Row("GET", "/models/registry", "admin", 200, b=200),
    Row(
        "POST",
        "/models/registry",
        "admin",
        200,
        b=200,
        body=lambda p: model_body(f"new:{p}", baseUrl=None),
    ),
    Row("GET", "/models/registry/{model}", "admin", 200),
    Row(
        "PATCH",
        "/models/registry/{model}",
        "admin",
        200,
        body=lambda p: {"displayName": "Renamed"},
        destructive=True,
    ),
    Row("DELETE", "/models/registry/{model}", "admin", 200, destructive=True),
    Row("POST", "/models/registry/{model}/health", "admin", 200),
    Row("GET", "/models/cluster_registry", "cluster", 200),
    Row("GET", "/models/cluster_registry/orgs/org-acme/grants", "cluster", 200),
    Row(
        "PUT",
        "/models/cluster_registry/orgs/org-acme/grants",
        "cluster",
        200,
        body=lambda p: {"modelIds": ["cluster:chat-b"]},
        destructive=True,
    ),
    Row("GET", "/models/auto", "admin", 200, b=200),
    Row(
        "PUT",
        "/models/auto/completions",
        "admin",
        200,
        b=400,  # org A's model is not one org B can resolve (no existence oracle: see A9)
        body=lambda p: {"modelId": "acme:chat-1"},
        destructive=True,
    ),
    Row("DELETE", "/models/auto/completions", "admin", 200, b=200, destructive=True),
    Row("POST", "/chat/completions", "key", 200, body=chat),
    Row("POST", "/chat/completions/stream", "key", 200, body=chat),
    Row("GET", "/files", "key", 200, b=200),
    Row("POST", "/files", "key", 200, b=200, body=jsonl_upload, multipart=True),
    Row("GET", "/files/{input}", "key", 200),
    Row("GET", "/files/{output}", "key", 200),
    Row("GET", "/files/{error}", "key", 200),
    Row("DELETE", "/files/{output}", "key", 200, destructive=True),
    Row("DELETE", "/files/{input}", "key", 200, destructive=True),
    Row("GET", "/files/{input}/content", "key", 200),
    Row("GET", "/files/{output}/content", "key", 200),
    Row("GET", "/files/{error}/content", "key", 200),
    Row("GET", "/batches", "key", 200, b=200),
    Row(
        "POST",
        "/batches",
        "key",
        200,
        body=lambda p: {"input_file_id": "{input}", "endpoint": "/v1/chat/completions"},
    ),
    Row("GET", "/batches/{batch}", "key", 200),
    Row("POST", "/batches/{batch}/cancel", "key", 409),  # org A's batch has ended
    Row("GET", "/openapi.json", "public", 200),
]


def edit_form(principal: str) -> dict[str, Any]:
    return form_data(id="acme:chat-1", display_name="Renamed", base_url=None)


PAGE_ROWS = [
    Row("GET", "/", "session", 302, b=302),
    Row("GET", "/login", "public", 200, signed_in=302),  # signed in: on to the dashboard
    Row("POST", "/logout", "public", 302),
    Row("GET", "/switch-org?org=org-acme", "member", 302),
    Row("GET", "/healthz", "public", 200),
    Row("GET", f"{ORG}/models", "member", 200),
    Row("GET", f"{ORG}/models/new", "admin", 200),
    Row("POST", f"{ORG}/models/new", "admin", 302, body=lambda p: form_data(id=f"new:{p}")),
    Row("POST", f"{ORG}/models/test", "admin", 200, body=lambda p: form_data(base_url="")),
    Row("POST", f"{ORG}/models/test/{{model}}", "admin", 200, body=edit_form),
    Row("GET", f"{ORG}/models/edit/{{model}}", "admin", 200),
    Row("POST", f"{ORG}/models/edit/{{model}}", "admin", 302, body=edit_form, destructive=True),
    Row("GET", f"{ORG}/models/delete/{{model}}", "admin", 200),
    Row("POST", f"{ORG}/models/delete/{{model}}", "admin", 302, destructive=True),
    Row("GET", f"{ORG}/auto", "member", 200),
    Row(
        "POST",
        f"{ORG}/auto/completions",
        "admin",
        302,
        body=lambda p: {"action": "clear"},
        destructive=True,
    ),
    Row("GET", f"{ORG}/health", "member", 200),
    Row("POST", f"{ORG}/health/check/{{model}}", "admin", 302),
    Row("GET", f"{ORG}/keys", "admin", 200),
    Row("POST", f"{ORG}/keys", "admin", 200, body=lambda p: {"name": p, "role": "member"}),
    Row("GET", f"{ORG}/keys/revoke/{{key}}", "admin", 200),
    Row("POST", f"{ORG}/keys/revoke/{{key}}", "admin", 302, destructive=True),
    Row("GET", f"{ORG}/playground", "member", 200),
    Row(
        "POST",
        f"{ORG}/playground",
        "member",
        200,
        body=lambda p: {"model": "acme:chat-1", "message": "hi"},
    ),
    Row("GET", f"{ORG}/playground/stream/{{token}}", "owner", 200),
    Row("GET", f"{ORG}/usage", "admin", 200),
    Row("GET", f"{ORG}/activity", "admin", 200),
    Row("GET", f"{ORG}/batches", "member", 200),
    Row("POST", f"{ORG}/batches", "member", 302, body=lambda p: {"input_file": "{input}"}),
    Row("GET", f"{ORG}/batches/cancel/{{batch}}", "member", 200),
    Row("POST", f"{ORG}/batches/cancel/{{batch}}", "member", 302),  # ended: a message, no change
    Row("GET", f"{ORG}/files", "member", 200),
    Row("POST", f"{ORG}/files", "member", 302, body=jsonl_upload, multipart=True),
    Row("GET", f"{ORG}/files/delete/{{output}}", "member", 200),
    Row("POST", f"{ORG}/files/delete/{{output}}", "member", 302, destructive=True),
    Row("GET", f"{ORG}/files/content/{{input}}", "member", 200),
    Row("GET", f"{ORG}/files/content/{{output}}", "member", 200),
    Row("GET", f"{ORG}/files/content/{{error}}", "member", 200),
    Row("GET", "/grants", "cluster", 200),
    Row(
        "POST",
        "/grants/org-acme",
        "cluster",
        302,
        body=lambda p: {"action": "revoke", "model": "cluster:chat-a"},
        destructive=True,
    ),
    Row("GET", "/docs/api", "session", 200, b=200),
]


# --------------------------------------------------------------------------------------------
# Expected statuses


def expected_api(row: Row, principal: str) -> int:
    if row.scope == "public":
        return row.ok
    if principal not in ("a_member_key", "a_admin_key", "b_admin_key", "cluster_admin"):
        return 401  # no key, a revoked one, or only a session (the API ignores cookies)
    if row.scope == "cluster":
        return row.ok if principal == "cluster_admin" else 403
    if row.scope == "admin" and principal == "a_member_key":
        return 403
    if principal == "b_admin_key":
        return row.b if row.b is not None else 404
    return row.ok


LOGIN = 302  # the sign-in redirect


def expected_page(row: Row, principal: str) -> int:
    signed_in = principal in ("a_session", "a_member_session", "b_session", "cluster_admin")
    if row.scope == "public":
        return row.signed_in if signed_in and row.signed_in is not None else row.ok
    if not signed_in:
        return LOGIN
    if row.scope == "session":
        return row.ok
    if row.scope == "cluster":
        return row.ok if principal == "cluster_admin" else 403
    if row.scope == "owner":  # the playground stream of org A's admin user only
        return row.ok if principal == "a_session" else 404
    if principal == "b_session":
        return row.b if row.b is not None else 404
    if row.scope == "admin" and principal == "a_member_session":
        return 403
    return row.ok


# --------------------------------------------------------------------------------------------
# Sending one cell


@pytest.fixture(scope="module")
def loopback_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@dataclass
class Cell:
    surface: str
    row: Row
    principal: str

    @property
    def name(self) -> str:
        return f"{self.surface} {self.row.method} {self.row.path} as {self.principal}"


def _fill(value: Any, t: Tenants) -> Any:
    if isinstance(value, str):
        return value.format(**t.values()) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, t) for k, v in value.items()}
    return value


def session_client(t: Tenants, principal: str) -> Client:
    pages = Client()
    user = t.users.get(principal)
    if user is not None:
        pages.force_login(user)
    return pages


def send_api(api: AsgiClient, t: Tenants, row: Row, principal: str) -> Any:
    headers: dict[str, str] = {}
    if principal in t.tokens:
        headers["Authorization"] = f"Bearer {t.tokens[principal]}"
    if principal in t.users and principal != "cluster_admin":
        cookie = session_client(t, principal).cookies[django_settings.SESSION_COOKIE_NAME]
        headers["Cookie"] = f"{django_settings.SESSION_COOKIE_NAME}={cookie.value}"
    kwargs: dict[str, Any] = {"headers": headers}
    if row.body is not None:
        body = _fill(row.body(principal), t)
        if row.multipart:
            upload = body.pop("file")
            kwargs["files"] = {"file": (upload.name, upload.read(), "application/jsonl")}
            kwargs["data"] = body
        else:
            kwargs["json"] = body
    return api.request(row.method, API + _fill(row.path, t), **kwargs)


def send_page(t: Tenants, row: Row, principal: str) -> Any:
    pages = session_client(t, principal)
    headers = {}
    if principal in t.tokens:  # a key means nothing to the dashboard
        headers["Authorization"] = f"Bearer {t.tokens[principal]}"
    path = row.path
    if "{token}" in path:
        path = path.replace("{token}", t.playground_token())
    path = _fill(path, t)
    if row.method == "GET":
        return pages.get(path, headers=headers)
    data = _fill(row.body(principal), t) if row.body else {}
    return pages.post(path, data, headers=headers)


def body_text(response: Any) -> str:
    if getattr(response, "streaming", False):
        response.close()  # an allowed playground stream: the status is what counts here
        return ""
    content = getattr(response, "content", b"")
    return content.decode("utf-8", "replace")


@dataclass
class Tally:
    cells: int = 0
    leaks: int = 0
    denied_diffs: int = 0
    failures: list[str] | None = None

    def fail(self, cell: Cell, text: str) -> None:
        assert self.failures is not None
        self.failures.append(f"{cell.name}: {text}")


def run_cells(
    surface: str,
    rows: list[Row],
    state: dict[str, Any],
    upstream_url: str,
    api: AsgiClient | None,
    tally: Tally,
) -> None:
    expect = expected_api if surface == "api" else expected_page
    cells = [Cell(surface, row, p) for row in rows for p in PRINCIPALS]

    def allowed_write(cell: Cell) -> bool:
        status = expect(cell.row, cell.principal)
        return cell.row.destructive and status < 400 and cell.principal in ORG_A

    # Refused and harmless cells first, then each destructive allowed write on a fresh build.
    order = [c for c in cells if not allowed_write(c)] + [c for c in cells if allowed_write(c)]
    for cell in order:
        if state["dirty"]:
            wipe()
            state["t"] = build(upstream_url)
            state["dirty"] = False
        t = state["t"]
        expected = expect(cell.row, cell.principal)
        denied = expected >= 400 or (expected == LOGIN and surface == "page" and _is_login(cell))
        before = snapshot()
        before_a = snapshot(t.org_a)
        if surface == "api":
            assert api is not None
            response = send_api(api, t, cell.row, cell.principal)
            status, location = response.status_code, response.headers.get("location", "")
        else:
            response = send_page(t, cell.row, cell.principal)
            status, location = response.status_code, response.get("Location", "")
        text = body_text(response) if surface == "page" else response.text
        tally.cells += 1
        if status != expected:
            tally.fail(cell, f"expected {expected}, got {status}: {text[:200]!r}")
        if expected == LOGIN and _is_login(cell) and not location.startswith("/login?next="):
            tally.fail(cell, f"expected the sign-in redirect, got Location {location!r}")
        if cell.principal not in ORG_A or status >= 400:
            shown = [m for m in MARKERS if m in text or m in location]
            if shown:
                tally.leaks += 1
                tally.fail(cell, f"org A's private data in the response: {shown}")
        elif MARKERS[-1] in text:
            tally.leaks += 1
            tally.fail(cell, "a provider secret in the response")
        if denied or status >= 400:
            changed = diff(before, snapshot())
            if changed:
                tally.denied_diffs += 1
                tally.fail(cell, f"a refused request changed the database: {changed}")
                state["dirty"] = True
        elif cell.principal not in ORG_A:
            changed = diff(before_a, snapshot(t.org_a))
            if changed:
                tally.leaks += 1
                tally.fail(cell, f"org B's allowed call changed org A's rows: {changed}")
                state["dirty"] = True
        if allowed_write(cell):
            state["dirty"] = True


def _is_login(cell: Cell) -> bool:
    signed_in = cell.principal in ("a_session", "a_member_session", "b_session", "cluster_admin")
    return cell.surface == "page" and cell.row.scope != "public" and not signed_in


@pytest.fixture
def tenants(
    transactional_db: Any,
    settings: Any,
    tmp_path: Any,
    loopback_upstream: UpstreamServer,
    batch_env: Any,  # noqa: F811
) -> list[Tenants]:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return [build(loopback_upstream.url)]


# --------------------------------------------------------------------------------------------
# Tests


def _patterns(resolver: URLResolver, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _patterns(entry, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def _route_of(path: str) -> str:
    match = resolve(urlsplit(path).path)
    return match.route


def test_every_route_and_method_has_a_row(
    tenants: list[Tenants], client: AsgiClient, settings: Any
) -> None:
    """A route (or a method of one) without a row in the tables fails here."""
    t = tenants[0]
    all_routes = {route for route, p in _patterns(get_resolver())}
    api_routes = {r for r in all_routes if r.startswith("api/v1/llm/") and "^" not in r}
    page_routes = {
        r
        for r in all_routes
        if not r.startswith(("api", "admin/", "^static", "static/")) and "^" not in r
    }
    api_rows: dict[str, set[str]] = {}
    for row in API_ROWS:
        route = _route_of(API + _fill(row.path, t))
        api_rows.setdefault(route, set()).add(row.method)
    page_rows: dict[str, set[str]] = {}
    for row in PAGE_ROWS:
        route = _route_of(_fill(row.path.replace("{token}", "tok"), t))
        page_rows.setdefault(route, set()).add(row.method)
    assert set(api_rows) == api_routes, set(api_routes) ^ set(api_rows)
    assert set(page_rows) == page_routes, set(page_routes) ^ set(page_rows)

    # Every method a route answers (its 405's Allow header) has a row.
    token = t.tokens["cluster_admin"]
    for row in API_ROWS:
        path = API + _fill(row.path, t)
        response = client.request("TRACE", path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 405, path
        allowed = {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"}
        assert allowed <= api_rows[_route_of(path)], (path, allowed)
    root = session_client(t, "cluster_admin")
    for row in PAGE_ROWS:
        path = _fill(row.path.replace("{token}", "tok"), t)
        response = root.generic("TRACE", path)
        if response.status_code == 405:
            allowed = {m.strip() for m in response["Allow"].split(",")} - {"HEAD", "OPTIONS"}
            assert allowed <= page_rows[_route_of(path)], (path, allowed)
        else:  # Django's own views (sign-in) answer other methods with their form
            assert _route_of(path) in ("login", "logout"), (path, response.status_code)
    record("G2", routes_api=len(api_routes), routes_pages=len(page_routes))


def test_tenancy_matrix(
    tenants: list[Tenants], client: AsgiClient, loopback_upstream: UpstreamServer
) -> None:
    tally = Tally(failures=[])
    state = {"t": tenants[0], "dirty": False}
    run_cells("api", API_ROWS, state, loopback_upstream.url, client, tally)
    run_cells("page", PAGE_ROWS, state, loopback_upstream.url, None, tally)
    assert not tally.failures, f"{len(tally.failures)} cells failed:\n" + "\n".join(tally.failures)
    assert tally.cells == len(PRINCIPALS) * (len(API_ROWS) + len(PAGE_ROWS)) >= 300
    record(
        "G2",
        cells=tally.cells,
        principals=len(PRINCIPALS),
        cross_tenant_leaks=tally.leaks,
        db_diffs_after_denied=tally.denied_diffs,
    )


def test_the_snapshot_sees_what_the_matrix_must_catch(tenants: list[Tenants]) -> None:
    """The control: an allowed write by org A's admin is a diff (so "no diff" means something)."""
    t = tenants[0]
    before, before_a = snapshot(), snapshot(t.org_a)
    pages = session_client(t, "a_session")
    response = pages.post(f"{ORG}/files/delete/{t.output}")
    assert response.status_code == 302
    assert "File" in diff(before, snapshot()) and "blobs" in diff(before, snapshot())
    assert "File" in diff(before_a, snapshot(t.org_a))
