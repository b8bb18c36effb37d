"""SSRF matrix (RELIABILITY.md S1–S8, S10; goal G3): every URL form × every entry point that takes
a URL, with a canary TCP listener on loopback that must never see a connection.

Entry points: the API's add (baseUrl and a legacy healthCheck.url) and update, the dashboard's
model form (create and edit) and "Test connection" (unsaved and stored), health checks (the API op
and the dashboard's "Check now"), chat completions and the playground on a stored model whose URL
is internal, and batch lines whose `url` is an absolute URL. Loopback forms point at the canary's
port, so a single fetch anywhere would be recorded.

Stored rows with a refused URL are written past the service (as rows saved under an older
allowlist would be), so that the call-time checks are what is tested there.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client

from orgs import generation
from orgs.models import Membership, Role
from registry import upstream
from registry.models import HealthStatus, RegistryModel
from registry.services import add_model
from tests.batches.conftest import batch_env  # noqa: F401  (a private broker queue and storage)
from tests.conftest import SECRET, auth, model_body
from tests.dashboard.conftest import form_data
from tests.dashboard.test_playground import parse_sse
from tests.hardening.figures import record
from tests.hardening.matrix_asgi import AsgiClient, asgi_client
from tests.hardening.ssrf_canary import REDIRECT_BODY, Canary, FakeDNS, Redirector
from tests.upstream_server import INTERNAL_SECRET, UpstreamServer

API = "/api/v1/llm"
ORG = "/orgs/org-acme"
HTMX = {"HX-Request": "true"}
BASE_MODEL = "acme:chat-1"
METADATA_ALLOWLIST = [  # every range around the metadata addresses, but never the addresses
    "127.0.0.1/32",
    "10.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fd00::/8",
    "::ffff:0:0/96",
]

client = pytest.fixture(scope="module")(asgi_client)


@dataclass(frozen=True)
class Form:
    name: str
    item: str  # the checklist item it belongs to
    template: str  # "{port}" becomes the canary's port

    def url(self, port: int) -> str:
        return self.template.replace("{port}", str(port))


FORMS = [
    # S1: schemes other than http(s), and none at all
    Form("file", "S1", "file:///etc/passwd"),
    Form("gopher", "S1", "gopher://127.0.0.1:{port}/_SET%20x"),
    Form("ftp", "S1", "ftp://127.0.0.1:{port}/"),
    Form("dict", "S1", "dict://127.0.0.1:{port}/info"),
    Form("data", "S1", "data:text/plain,hello"),
    Form("javascript", "S1", "javascript:alert(1)"),
    Form("no-scheme", "S1", "127.0.0.1:{port}/v1"),
    Form("scheme-relative", "S1", "//127.0.0.1:{port}/v1"),
    # S2: loopback, unspecified, localhost
    Form("127.0.0.1", "S2", "http://127.0.0.1:{port}/v1"),
    Form("127.1", "S2", "http://127.1:{port}/v1"),
    Form("0.0.0.0", "S2", "http://0.0.0.0:{port}/v1"),
    Form("0", "S2", "http://0:{port}/v1"),
    Form("localhost", "S2", "http://localhost:{port}/v1"),
    Form("localhost.", "S2", "http://localhost.:{port}/v1"),
    Form("LOCALHOST-upper", "S2", "HTTP://LOCALHOST:{port}/v1"),
    Form("sub.localhost", "S2", "http://api.localhost:{port}/v1"),
    Form("[::1]", "S2", "http://[::1]:{port}/v1"),
    Form("[::]", "S2", "http://[::]:{port}/v1"),
    Form("https-loopback", "S2", "https://127.0.0.1:{port}/v1"),
    # S3: private, link-local, CGNAT and metadata
    Form("10/8", "S3", "http://10.0.0.1/v1"),
    Form("172.16/12", "S3", "http://172.16.0.1/v1"),
    Form("172.31", "S3", "http://172.31.255.254/v1"),
    Form("192.168/16", "S3", "http://192.168.1.1/v1"),
    Form("aws-metadata", "S3", "http://169.254.169.254/latest/meta-data/"),
    Form("ecs-metadata", "S3", "http://169.254.170.2/v2/credentials"),
    Form("100.64/10", "S3", "http://100.64.0.1/v1"),
    Form("alibaba-metadata", "S3", "http://100.100.100.200/latest/meta-data/"),
    Form("fd00::/8", "S3", "http://[fd00::1]/v1"),
    Form("fe80::/10", "S3", "http://[fe80::1]/v1"),
    Form("gcp-metadata-name", "S3", "http://metadata.google.internal/computeMetadata/v1/"),
    Form("metadata-name", "S3", "http://metadata/computeMetadata/v1/"),
    Form("aws-ipv6-metadata", "S3", "http://[fd00:ec2::254]/latest/meta-data/"),
    # S4: other spellings of loopback and metadata
    Form("decimal", "S4", "http://2130706433:{port}/v1"),
    Form("hex", "S4", "http://0x7f000001:{port}/v1"),
    Form("octal", "S4", "http://0177.0.0.1:{port}/v1"),
    Form("zero-padded", "S4", "http://127.000.000.001:{port}/v1"),
    Form("hex-dotted", "S4", "http://0x7f.0.0.1:{port}/v1"),
    Form("v4-mapped-dotted", "S4", "http://[::ffff:127.0.0.1]:{port}/v1"),
    Form("v4-mapped-hex", "S4", "http://[::ffff:7f00:1]:{port}/v1"),
    Form("v4-mapped-metadata", "S4", "http://[0:0:0:0:0:ffff:a9fe:a9fe]/latest/meta-data/"),
    Form("nat64-loopback", "S4", "http://[64:ff9b::7f00:1]:{port}/v1"),
    Form("6to4-loopback", "S4", "http://[2002:7f00:1::]:{port}/v1"),
    Form("percent-encoded-host", "S4", "http://%31%32%37.0.0.1:{port}/v1"),
    # S5: parser confusion
    Form("userinfo", "S5", "http://ok.example@127.0.0.1:{port}/v1"),
    Form("userinfo-password", "S5", "http://ok.example:pw@127.0.0.1:{port}/v1"),
    Form("fragment-at", "S5", "http://127.0.0.1:{port}#@ok.example/v1"),
    Form("backslash-at", "S5", "http://127.0.0.1:{port}\\@ok.example/v1"),
    Form("backslash-host", "S5", "http://ok.example\\@127.0.0.1:{port}/v1"),
    Form("leading-space", "S5", " http://127.0.0.1:{port}/v1"),
    Form("inner-space", "S5", "http://127.0.0.1 :{port}/v1"),
    Form("tab", "S5", "http://127.0.0.1:{port}\t/v1"),
    Form("newline", "S5", "http://ok.example/\nhttp://127.0.0.1:{port}/v1"),
    Form("fullwidth-dots", "S5", "http://127\uff0e0\uff0e0\uff0e1:{port}/v1"),
    Form("ideographic-dots", "S5", "http://127\u30020\u30020\u30021:{port}/v1"),
]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def canary() -> Iterator[Canary]:
    with Canary() as listener:
        yield listener


@dataclass
class Setup:
    world: Any
    user: Any  # a session user, admin of org A
    pages: Client
    api: AsgiClient
    port: int
    edit_data: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.world.alice)


@pytest.fixture
def setup(world: Any, make_model: Any, client: AsgiClient, canary: Canary) -> Setup:
    make_model(world.org_a, BASE_MODEL)
    user = get_user_model().objects.create_user("ssrf-admin", "a@example.com", "pw-ssrf-12345")
    Membership.objects.create(user=user, org=world.org_a, role=Role.ADMIN)
    pages = Client()
    pages.force_login(user)
    return Setup(world, user, pages, client, canary.port, edit_data(pages, BASE_MODEL))


def store_url(org: Any, model_id: str, url: str) -> None:
    """Point a stored model at `url`, past the service's save-time checks."""
    model = RegistryModel.objects.get(org=org, registry_id=model_id)
    full = model.full_definition()
    full["baseUrl"] = url
    model.set_definition(full)
    model.save()
    generation.bump()


def edit_data(pages: Client, model_id: str, **overrides: Any) -> dict[str, Any]:
    """The edit form of a stored model as the browser would post it back."""
    form = pages.get(f"{ORG}/models/edit/{model_id}").context["form"]
    data = {n: form[n].value() for n in form.fields if form[n].value() is not None}
    data.update(overrides)
    return data


# --------------------------------------------------------------------------------------------
# Entry points: each sends one URL and says whether it was refused (and how)


@dataclass
class Verdict:
    refused: bool
    how: str  # the status and the message, for the report


def api_error(response: Any) -> dict[str, Any]:
    try:
        return response.json().get("error") or {}
    except ValueError:
        return {}


def _api_field_error(response: Any, param: str) -> Verdict:
    error = api_error(response)
    refused = 400 <= response.status_code < 500 and error.get("param") == param
    return Verdict(refused, f"{response.status_code} {error.get('param')}: {error.get('message')}")


def _probe_verdict(result: dict[str, Any] | None) -> Verdict:
    """A health or test result: refused without a fetch, and a sanitized message (S8)."""
    if not result:
        return Verdict(False, "no result")
    error = result.get("error") or ""
    problems = result.get("problems") or []
    clean = all(text not in error for text in (REDIRECT_BODY.decode(), "ok.example@", "pw@"))
    refused = (
        result.get("is_available", result.get("ok")) is False
        and (error.startswith(("blocked: ", "baseUrl: ")) or bool(problems))
        and clean
    )
    return Verdict(refused, f"{error} {problems}".strip())


def ep_api_add(s: Setup, url: str, i: int) -> Verdict:
    body = model_body(f"acme:add-{i}", baseUrl=url)
    verdict = _api_field_error(
        s.api.post(f"{API}/models/registry", json=body, headers=s.headers), "baseUrl"
    )
    verdict.refused &= not RegistryModel.objects.filter(registry_id=f"acme:add-{i}").exists()
    return verdict


def ep_api_add_health_url(s: Setup, url: str, i: int) -> Verdict:
    body = model_body(f"acme:hc-{i}", healthCheck={"url": url, "method": "GET"})
    response = s.api.post(f"{API}/models/registry", json=body, headers=s.headers)
    verdict = _api_field_error(response, "healthCheck.url")
    verdict.refused &= not RegistryModel.objects.filter(registry_id=f"acme:hc-{i}").exists()
    return verdict


def ep_api_update(s: Setup, url: str, i: int) -> Verdict:
    response = s.api.patch(
        f"{API}/models/registry/{BASE_MODEL}", json={"baseUrl": url}, headers=s.headers
    )
    verdict = _api_field_error(response, "baseUrl")
    stored = RegistryModel.objects.get(org=s.world.org_a, registry_id=BASE_MODEL).base_url
    verdict.refused &= stored == "https://models.example.com/v1"
    return verdict


def _form_verdict(response: Any) -> Verdict:
    form = response.context["form"] if response.context else None
    errors = dict(form.errors) if form is not None else {}
    refused = response.status_code == 200 and "base_url" in errors
    return Verdict(refused, f"{response.status_code} {errors.get('base_url') or errors}")


def ep_form_create(s: Setup, url: str, i: int) -> Verdict:
    data = form_data(id=f"acme:form-{i}", base_url=url)
    verdict = _form_verdict(s.pages.post(f"{ORG}/models/new", data))
    verdict.refused &= not RegistryModel.objects.filter(registry_id=f"acme:form-{i}").exists()
    return verdict


def ep_form_edit(s: Setup, url: str, i: int) -> Verdict:
    data = {**s.edit_data, "base_url": url}
    verdict = _form_verdict(s.pages.post(f"{ORG}/models/edit/{BASE_MODEL}", data))
    stored = RegistryModel.objects.get(org=s.world.org_a, registry_id=BASE_MODEL).base_url
    verdict.refused &= stored == "https://models.example.com/v1"
    return verdict


def _test_verdict(response: Any) -> Verdict:
    """The "Test connection" result as the page shows it (the htmx fragment)."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode()))
    text = " ".join(text.split())
    shown = text.partition("Connection failed: ")[2]
    result = {"ok": False if shown else None, "error": shown}
    verdict = _probe_verdict(result if response.status_code == 200 else None)
    verdict.how = text[:300]
    return verdict


def ep_form_test(s: Setup, url: str, i: int) -> Verdict:
    return _test_verdict(s.pages.post(f"{ORG}/models/test", form_data(base_url=url), headers=HTMX))


def ep_form_test_stored(s: Setup, url: str, i: int) -> Verdict:
    data = {**s.edit_data, "base_url": url}
    return _test_verdict(s.pages.post(f"{ORG}/models/test/{BASE_MODEL}", data, headers=HTMX))


def ep_api_health(s: Setup, url: str, i: int) -> Verdict:
    model_id = f"acme:stored-{i}"
    response = s.api.post(f"{API}/models/registry/{model_id}/health", headers=s.headers)
    if response.status_code != 200:
        return Verdict(False, f"{response.status_code} {response.text[:200]}")
    return _probe_verdict(response.json())


def ep_dashboard_check_now(s: Setup, url: str, i: int) -> Verdict:
    model_id = f"acme:stored-{i}"
    response = s.pages.post(f"{ORG}/health/check/{model_id}", headers=HTMX)
    model = RegistryModel.objects.get(org=s.world.org_a, registry_id=model_id)
    status = HealthStatus.objects.filter(target=model.health_key).first()
    if response.status_code != 200 or status is None:
        return Verdict(False, f"{response.status_code} no stored result")
    result = {"is_available": status.is_available, "error": status.error}
    return _probe_verdict(result)


def ep_api_chat(s: Setup, url: str, i: int) -> Verdict:
    body = {"model": f"acme:stored-{i}", "messages": [{"role": "user", "content": "hi"}]}
    response = s.api.post(f"{API}/chat/completions", json=body, headers=s.headers)
    error = api_error(response)
    message = error.get("message") or ""
    refused = response.status_code in (400, 502) and message.startswith("blocked: ")
    return Verdict(refused, f"{response.status_code} {message}")


def playground_events(user: Any, pages: Client, model_id: str) -> list[tuple[str, str]]:
    """Send a prompt in the playground and read the answer's event stream."""
    sent = pages.post(f"{ORG}/playground", {"model": model_id, "message": "hi"}, headers=HTMX)
    urls = [html.unescape(u) for u in re.findall(r'sse-connect="([^"]+)"', sent.content.decode())]
    assert sent.status_code == 200 and len(urls) == 1, sent.content.decode()[:500]

    async def run() -> bytes:
        stream_client = AsyncClient()
        await stream_client.aforce_login(user)
        response = await stream_client.get(urls[0])
        assert response.status_code == 200
        return b"".join([part async for part in response.streaming_content])

    return parse_sse(async_to_sync(run)())


def _playground_verdict(events: list[tuple[str, str]], must_say: str) -> Verdict:
    failures = [html.unescape(re.sub(r"<[^>]+>", "", d)) for e, d in events if e == "failure"]
    tokens = [d for e, d in events if e == "token"]
    refused = bool(failures) and not tokens and must_say in failures[0]
    return Verdict(refused, " ".join(f.strip() for f in failures) or str(events)[:200])


def ep_playground(s: Setup, url: str, i: int) -> Verdict:
    return _playground_verdict(playground_events(s.user, s.pages, f"acme:stored-{i}"), "blocked: ")


EntryPoint = Callable[[Setup, str, int], Verdict]
ENTRY_POINTS: dict[str, EntryPoint] = {
    "api_add": ep_api_add,
    "api_add_health_url": ep_api_add_health_url,
    "api_update": ep_api_update,
    "form_create": ep_form_create,
    "form_edit": ep_form_edit,
    "form_test_connection": ep_form_test,
    "form_test_connection_stored": ep_form_test_stored,
    "api_health_check": ep_api_health,
    "dashboard_check_now": ep_dashboard_check_now,
    "api_chat": ep_api_chat,
    "playground": ep_playground,
}
STORED = {"api_health_check", "dashboard_check_now", "api_chat", "playground"}


# --------------------------------------------------------------------------------------------
# The matrix


def test_the_matrix_is_big_enough() -> None:
    assert len(FORMS) >= 40
    assert len({f.name for f in FORMS}) == len(FORMS)
    assert {f.item for f in FORMS} == {"S1", "S2", "S3", "S4", "S5"}


def run_matrix(s: Setup, canary: Canary, names: list[str]) -> tuple[int, int, list[str]]:
    """Every form × the named entry points: (cells, rejected, failure lines)."""
    if STORED & set(names):
        for i, form in enumerate(FORMS):
            add_model(s.world.org_a, model_body(f"acme:stored-{i}", modelId="chunks@2"), actor="t")
            store_url(s.world.org_a, f"acme:stored-{i}", form.url(s.port))
    cells = rejected = 0
    failures = []
    for name in names:
        for i, form in enumerate(FORMS):
            before = canary.count
            verdict = ENTRY_POINTS[name](s, form.url(s.port), i)
            cells += 1
            connected = canary.count - before
            if verdict.refused and not connected:
                rejected += 1
            else:
                failures.append(
                    f"{name} × {form.name} ({form.url(s.port)!r}): refused={verdict.refused} "
                    f"canary_connections={connected}: {verdict.how[:300]}"
                )
    return cells, rejected, failures


def test_every_form_is_refused_at_every_entry_point(
    setup: Setup, canary: Canary, settings: Any
) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = []  # the default: no operator allowlist
    names = list(ENTRY_POINTS)
    cells, rejected, failures = run_matrix(setup, canary, names)
    assert not failures, "\n".join(failures)
    assert canary.count == 0
    record(
        "G3",
        forms=len(FORMS),
        entry_points=[*names, "batch_line_url"],
        cells=cells + len(FORMS),  # the batch lines are counted by their own test below
        rejected=rejected + len(FORMS),
        canary_connections=canary.count,
    )


def test_batch_lines_with_an_absolute_url_are_line_errors(
    setup: Setup,
    canary: Canary,
    batch_env: Any,  # noqa: F811
) -> None:
    """S10: a batch line whose `url` is not the batch's endpoint path fails validation with the
    line's number; nothing is fetched."""
    from batches import runner
    from batches.models import Batch

    lines = [
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": form.url(setup.port),
                "body": {"model": BASE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        for i, form in enumerate(FORMS)
    ]
    data = ("\n".join(lines) + "\n").encode()
    uploaded = setup.api.post(
        f"{API}/files",
        headers=setup.headers,
        files={"file": ("in.jsonl", data, "application/octet-stream")},
        data={"purpose": "batch"},
    )
    assert uploaded.status_code == 200, uploaded.text
    created = setup.api.post(
        f"{API}/batches",
        headers=setup.headers,
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"},
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    runner.run_batch(Batch.objects.get(public_id=batch_id).pk)

    batch = setup.api.get(f"{API}/batches/{batch_id}", headers=setup.headers).json()
    assert batch["status"] == "failed", batch
    errors = batch["errors"]["data"]
    assert [(e["line"], e["code"], e["param"]) for e in errors] == [
        (i + 1, "invalid_url", "url") for i in range(len(FORMS))
    ]
    assert batch["request_counts"]["completed"] == 0
    assert canary.count == 0


# --------------------------------------------------------------------------------------------
# S2 "both modes" and S3: the operator allowlist lets loopback in, never metadata


def test_allowlisted_loopback_is_reached_and_that_is_what_the_canary_sees(
    setup: Setup, canary: Canary, settings: Any
) -> None:
    """The control of the whole matrix: with UPSTREAM_ALLOWED_NETWORKS=127.0.0.1/32 a loopback
    model is saved and its health check does connect to the canary."""
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    url = f"http://127.0.0.1:{setup.port}/v1"
    body = model_body("acme:allowed", baseUrl=url)
    added = setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers)
    assert added.status_code == 200, added.text
    result = setup.api.post(f"{API}/models/registry/acme:allowed/health", headers=setup.headers)
    assert result.status_code == 200 and result.json()["is_available"] is False
    assert canary.count == 1
    assert canary.connections[0].data.startswith(b"GET /v1/models HTTP/1.1")
    # Still not loopback in another spelling, nor other loopback addresses.
    for other in (f"http://127.0.0.2:{setup.port}/v1", f"http://[::1]:{setup.port}/v1"):
        response = setup.api.post(
            f"{API}/models/registry",
            json=model_body("acme:other", baseUrl=other),
            headers=setup.headers,
        )
        assert _api_field_error(response, "baseUrl").refused, response.text
    assert canary.count == 1


METADATA_FORMS = [f for f in FORMS if "metadata" in f.name]
ALLOWED_PRIVATE = ["http://10.0.0.1/v1", "http://169.254.1.1/v1", "http://100.64.0.1/v1"]


def test_metadata_stays_blocked_when_private_ranges_are_allowed(
    setup: Setup, canary: Canary, settings: Any
) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = METADATA_ALLOWLIST
    assert len(METADATA_FORMS) >= 6
    for i, url in enumerate(ALLOWED_PRIVATE):  # the control: the allowlist is in force
        body = model_body(f"acme:private-{i}", baseUrl=url)
        added = setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers)
        assert added.status_code == 200, added.text
    failures = []
    names = ["api_add", "api_add_health_url", "api_update", "form_create", "form_edit"]
    names += ["form_test_connection", "api_health_check", "dashboard_check_now", "api_chat"]
    saved, FORMS[:] = FORMS[:], METADATA_FORMS
    try:
        cells, rejected, failures = run_matrix(setup, canary, names)
    finally:
        FORMS[:] = saved
    assert not failures, "\n".join(failures)
    assert cells == rejected == len(METADATA_FORMS) * len(names)
    for verdict_source in ("api_add",):
        response = setup.api.post(
            f"{API}/models/registry",
            json=model_body("acme:meta", baseUrl="http://169.254.169.254/"),
            headers=setup.headers,
        )
        assert "metadata addresses are never allowed" in api_error(response)["message"], (
            verdict_source
        )


# --------------------------------------------------------------------------------------------
# S6: DNS rebinding, and the connection goes to the address that was checked


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS({})
    monkeypatch.setattr(upstream, "resolve_host", fake)
    return fake


def test_a_name_that_rebinds_to_loopback_is_blocked_at_call_time(
    setup: Setup, canary: Canary, dns: FakeDNS, settings: Any
) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    dns.set("rebind.example", ["203.0.113.7"])  # public when saved...
    url = f"http://rebind.example:{setup.port}/v1"
    body = model_body("acme:rebind", baseUrl=url, modelId="chunks@2")
    added = setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers)
    assert added.status_code == 200, added.text
    dns.set("rebind.example", ["127.0.0.1"], ["::1"])  # ...loopback when called

    chat = setup.api.post(
        f"{API}/chat/completions",
        json={"model": "acme:rebind", "messages": [{"role": "user", "content": "hi"}]},
        headers=setup.headers,
    )
    assert chat.status_code == 502 and "blocked: " in api_error(chat)["message"], chat.text
    assert "127.0.0.1" in api_error(chat)["message"]
    stream = setup.api.post(
        f"{API}/chat/completions",
        json={
            "model": "acme:rebind",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers=setup.headers,
    )
    assert stream.status_code == 502 and "blocked: " in api_error(stream)["message"]
    health = setup.api.post(f"{API}/models/registry/acme:rebind/health", headers=setup.headers)
    assert _probe_verdict(health.json()).refused, health.text
    now = setup.pages.post(f"{ORG}/health/check/acme:rebind", headers=HTMX)
    assert now.status_code == 200
    model = RegistryModel.objects.get(org=setup.world.org_a, registry_id="acme:rebind")
    assert HealthStatus.objects.get(target=model.health_key).error.startswith("blocked: ")
    data = edit_data(setup.pages, "acme:rebind")
    test = setup.pages.post(f"{ORG}/models/test/acme:rebind", data, headers=HTMX)
    assert _test_verdict(test).refused
    assert _playground_verdict(
        playground_events(setup.user, setup.pages, "acme:rebind"), "blocked: "
    ).refused
    assert dns.lookups["rebind.example"] >= 6  # every call asked the resolver again
    assert canary.count == 0
    record("G3", rebinding=True)


@pytest.fixture
def pinned_upstream() -> Iterator[tuple[UpstreamServer, Canary]]:
    """The test upstream on 127.0.0.2:X and a canary on 127.0.0.1:X (the same port)."""
    for _ in range(20):
        server = UpstreamServer(host="127.0.0.2").start()
        try:
            trap = Canary(port=server.port)
        except OSError:
            server.stop()
            continue
        with trap:
            yield server, trap
        server.stop()
        return
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


def test_the_connection_goes_to_the_checked_address(
    setup: Setup, dns: FakeDNS, settings: Any, pinned_upstream: tuple[UpstreamServer, Canary]
) -> None:
    """One lookup per connection, checked, then connected to: the first answer is the allowed
    127.0.0.2 (the upstream), any later one is 127.0.0.1 (a canary on the same port). The name
    exists only in the injected resolver, so a second lookup by anyone else would fail."""
    server, trap = pinned_upstream
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.2/32"]
    base = f"http://pinned.example:{server.port}/v1"
    body = model_body("acme:pinned", baseUrl=base, modelId="chunks@2")
    assert (
        setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers).status_code
        == 200
    )

    dns.set("pinned.example", ["127.0.0.2"], ["127.0.0.1"])
    health = setup.api.post(f"{API}/models/registry/acme:pinned/health", headers=setup.headers)
    assert health.json()["is_available"] is True, health.text
    assert dns.lookups["pinned.example"] == 1
    probe = next(r for r in server.requests() if r["path"] == "/v1/models")
    assert probe["headers"]["host"] == f"pinned.example:{server.port}"

    dns.set("pinned.example", ["127.0.0.2"], ["127.0.0.1"])
    chat = setup.api.post(
        f"{API}/chat/completions",
        json={"model": "acme:pinned", "messages": [{"role": "user", "content": "hi"}]},
        headers=setup.headers,
    )
    assert chat.status_code == 200, chat.text
    assert dns.lookups["pinned.example"] == 1
    sent = next(r for r in server.requests() if r["path"] == "/v1/chat/completions")
    assert sent["headers"]["host"] == f"pinned.example:{server.port}"
    assert sent["headers"]["authorization"] == f"Bearer {SECRET}"

    # The next probe looks the name up again, gets the rebound answer and refuses it.
    health = setup.api.post(f"{API}/models/registry/acme:pinned/health", headers=setup.headers)
    assert _probe_verdict(health.json()).refused, health.text
    assert trap.count == 0


# --------------------------------------------------------------------------------------------
# S7: redirects are never followed; S8: results carry a status class, never body bytes


@pytest.fixture
def loopback_upstream(settings: Any) -> Iterator[UpstreamServer]:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.1/32"]  # the canary is allowed too: still
    with UpstreamServer() as server:  # a redirect to it must not be followed
        yield server


def test_upstream_redirects_are_not_followed(
    setup: Setup, canary: Canary, loopback_upstream: UpstreamServer
) -> None:
    server = loopback_upstream
    for model_id, behaviour in (
        ("acme:redirect", f"fault-redirect@{canary.port}"),
        ("acme:redirect-internal", "fault-redirect-internal"),
    ):
        body = model_body(model_id, baseUrl=server.url + "/v1", modelId=behaviour)
        assert (
            setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers).status_code
            == 200
        )
        for stream in (False, True):
            chat = setup.api.post(
                f"{API}/chat/completions",
                json={
                    "model": model_id,
                    "stream": stream,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers=setup.headers,
            )
            assert chat.status_code == 502, chat.text
            assert INTERNAL_SECRET not in chat.text and SECRET not in chat.text
        events = playground_events(setup.user, setup.pages, model_id)
        assert _playground_verdict(events, "HTTP 302").refused, events
    assert [r["path"] for r in server.requests()] == ["/v1/chat/completions"] * 6
    assert canary.count == 0  # the provider's Authorization never went anywhere else
    record("G3", redirect=True)


def test_health_and_test_connection_do_not_follow_redirects_nor_show_bodies(
    setup: Setup, canary: Canary, settings: Any, loopback_upstream: UpstreamServer
) -> None:
    with Redirector(f"http://127.0.0.1:{canary.port}/latest/meta-data/") as redirector:
        body = model_body("acme:hops", baseUrl=redirector.url + "/v1")
        assert (
            setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers).status_code
            == 200
        )
        health = setup.api.post(f"{API}/models/registry/acme:hops/health", headers=setup.headers)
        result = health.json()
        assert result["is_available"] is False
        assert result["error"] == f"GET {redirector.url}/v1/models: redirect (3xx) not followed"
        test = setup.pages.post(f"{ORG}/models/test", form_data(base_url=redirector.url + "/v1"))
        assert test.context["test_result"]["error"].endswith("redirect (3xx) not followed")
        assert test.context["test_result"]["status_code"] == 302
        for text in (health.text, test.content.decode()):
            assert REDIRECT_BODY.decode() not in text
        assert len(redirector.requests) == 2
        assert f"authorization: bearer {SECRET}".encode() in redirector.requests[0].lower()
    # A 503 with a body: the status class only.
    body = model_body(
        "acme:down",
        baseUrl=loopback_upstream.url,
        healthCheck={"url": loopback_upstream.url + "/health/503"},
    )
    assert (
        setup.api.post(f"{API}/models/registry", json=body, headers=setup.headers).status_code
        == 200
    )
    down = setup.api.post(f"{API}/models/registry/acme:down/health", headers=setup.headers).json()
    assert down["error"] == f"GET {loopback_upstream.url}/health/503: HTTP 503"
    assert canary.count == 0
