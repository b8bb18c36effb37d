"""Provider keys are write-only (W5): once saved through the dashboard's model form, a secret is
never sent back to a browser, in any form a browser could read it.

tests/dashboard/test_security.py looks for the raw secret in the bytes of every page. Here each
page is parsed the way a browser parses it (character references decoded) and every place is
searched one by one: each attribute (`value=`, `hx-vals`, `hx-headers`, `data-*`…), inline
scripts, text and form fields, for the secret in plain text, in its common encodings (JSON and
URL escapes, base64, hex) and as any long piece of it; nor may the stored ciphertext appear.
The pages: the edit form (whole and as an htmx fragment, after a save and after an edit that
keeps the secret), the activity page, and the Django admin's change form, history and audit
entries for the model.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from orgs.models import AuditEvent, Membership, Role
from orgs.services import create_org
from registry.models import RegistryModel

KEY_SECRET = "sk-w5-9f3d1c0b7a4e62d8b1f0c3a9e7"
HEADER_SECRET = "hdr-w5-8e2a61f4c9d03b7e5a1f6b2d"
NESTED_SECRET = "sk-w5-c47d02e9b8a1f6d3e0c25a7f"
SECRETS = (KEY_SECRET, HEADER_SECRET, NESTED_SECRET)
WINDOW = 12  # no piece of a secret this long may appear
ORG = "/orgs/org-acme"
HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Staff:
    alice: Client  # org admin
    root: Client  # superuser and staff: the Django admin


@pytest.fixture
def staff(db: Any) -> Staff:
    org = create_org("org-acme", "Acme")
    users = get_user_model().objects
    alice = users.create_user("alice", "alice@example.com", "pw")
    root = users.create_user("root", "root@example.com", "pw", is_superuser=True, is_staff=True)
    Membership.objects.create(user=alice, org=org, role=Role.ADMIN)
    clients = Staff(Client(), Client())
    clients.alice.force_login(alice)
    clients.root.force_login(root)
    return clients


def form_data(model_id: str, **auth: str) -> dict[str, Any]:
    """A valid POST of the model form; `auth` holds the auth_* fields."""
    return {
        "id": model_id,
        "display_name": "W5 model",
        "provider": "openai-compatible",
        "model_id": "chat-1",
        "api_format": "completions",
        "api_provider_type": "openai",
        "created": "1704067200",
        "base_url": "https://models.example.com/v1",
        "context_window": "8192",
        "rpm": "60",
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "supports_temperature": "unknown",
        "supports_top_p": "unknown",
        "supports_video_url": "unknown",
        **auth,
    }


AUTHS = {
    "acme:w5-key": {"auth_type": "api-key", "auth_value": KEY_SECRET, "auth_header_name": "X-Key"},
    "acme:w5-headers": {
        "auth_type": "custom-headers",
        "auth_headers": f"X-Provider-Key: {HEADER_SECRET}\nX-Team: blue",
    },
    "acme:w5-composite": {
        "auth_type": "composite",
        "auth_composite": json.dumps(
            {
                "type": "composite",
                "strategies": [
                    {"type": "api-key", "value": NESTED_SECRET},
                    {"type": "custom-headers", "headers": {"X-H": HEADER_SECRET}},
                ],
            }
        ),
    },
}


# ---------------------------------------------------------------------------------------------
# Reading a page as a browser does


@dataclass
class Page:
    """Where a page can hold text: (place, decoded text) pairs."""

    places: list[tuple[str, str]] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)
        for name, value in attrs:
            self.page.places.append((f"<{tag} {name}=…>", value or ""))
            self.page.places.append((f"<{tag}> attribute name", name))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        where = self.stack[-1] if self.stack else "document"
        kind = "inline script" if where == "script" else f"text in <{where}>"
        self.page.places.append((kind, data))

    def handle_comment(self, data: str) -> None:
        self.page.places.append(("comment", data))


def read(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    # The raw bytes too: anything the parser dropped (a broken tag) still reaches the browser.
    reader.page.places.append(("raw HTML", html))
    return reader.page


def leaked_forms(secret: str) -> dict[str, str]:
    """The secret as a page could carry it."""
    raw = secret.encode()
    return {
        "plain": secret,
        "unicode escapes": "".join(f"\\u{ord(c):04x}" for c in secret),
        "URL-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "reversed": secret[::-1],
    }


def pieces(secret: str, size: int = WINDOW) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def assert_no_secret(url: str, html: str, ciphertexts: list[str]) -> int:
    """No secret (in any form) and no ciphertext anywhere on the page; the places searched."""
    page = read(html)
    for place, text in page.places:
        for secret in SECRETS:
            for how, form in leaked_forms(secret).items():
                assert form not in text, f"{url}: the secret ({how}) is in {place}"
            for piece in pieces(secret):
                assert piece not in text, f"{url}: part of a secret ({piece!r}) is in {place}"
        for ciphertext in ciphertexts:
            for piece in pieces(ciphertext, 24):
                assert piece not in text, f"{url}: the stored ciphertext is in {place}"
    return len(page.places)


# ---------------------------------------------------------------------------------------------
# The pages


def saved_through_the_form(staff: Staff) -> list[RegistryModel]:
    for model_id, auth in AUTHS.items():
        response = staff.alice.post(f"{ORG}/models/new", form_data(model_id, **auth))
        assert response.status_code == 302, response.content.decode()[:2000]
    models = list(RegistryModel.objects.filter(registry_id__in=AUTHS).order_by("registry_id"))
    assert len(models) == len(AUTHS)
    # Stored as typed (so the pages below have a real secret to keep to themselves).
    auths = {m.registry_id: m.get_auth() for m in models}
    assert auths["acme:w5-key"]["value"] == KEY_SECRET
    assert auths["acme:w5-headers"]["headers"]["X-Provider-Key"] == HEADER_SECRET
    assert auths["acme:w5-composite"]["strategies"][0]["value"] == NESTED_SECRET
    for model in models:
        assert not any(s in model.auth_ciphertext for s in SECRETS)  # encrypted at rest
    return models


def pages_of(staff: Staff, models: list[RegistryModel]) -> list[tuple[str, str]]:
    """(url, html) of every page that shows one of `models` or its history."""
    out: list[tuple[str, str]] = []

    def get(client: Client, url: str, headers: dict[str, str] | None = None) -> None:
        response = client.get(url, headers=headers or {})
        assert response.status_code == 200, url
        out.append((url, response.content.decode()))

    for model in models:
        edit = f"{ORG}/models/edit/{model.registry_id}"
        get(staff.alice, edit)
        get(staff.alice, edit, HTMX)
        base = f"/admin/registry/registrymodel/{model.pk}"
        get(staff.root, f"{base}/change/")
        get(staff.root, f"{base}/history/")
        get(staff.root, f"{base}/delete/")
    get(staff.alice, f"{ORG}/activity")
    get(staff.root, "/admin/registry/registrymodel/")
    for event in AuditEvent.objects.filter(action__startswith="model."):
        get(staff.root, f"/admin/orgs/auditevent/{event.pk}/change/")
    return out


def test_saved_secrets_never_come_back_to_a_browser(staff: Staff) -> None:
    from tests.hardening.figures import record

    models = saved_through_the_form(staff)
    ciphertexts = [m.auth_ciphertext for m in models]
    searched = 0
    pages = pages_of(staff, models)
    for url, html in pages:
        searched += assert_no_secret(url, html, ciphertexts)

    # The edit form offers an empty, masked field and says that a key is kept.
    edit = read(dict(pages)[f"{ORG}/models/edit/acme:w5-key"])
    inputs = [text for place, text in edit.places if place.startswith("<input")]
    assert "password" in inputs  # type="password"
    key_box = staff.alice.get(f"{ORG}/models/edit/acme:w5-key").context["form"]["auth_value"]
    assert key_box.value() in (None, "")
    assert 'name="auth_value" value' not in key_box.as_widget()

    # Saving the form unchanged (the secret left blank) keeps the secret, and the pages that
    # follow still do not show it.
    for model in models:
        response = staff.alice.get(f"{ORG}/models/edit/{model.registry_id}")
        form = response.context["form"]
        data = {n: form[n].value() for n in form.fields if form[n].value() is not None}
        data.pop("auth_value", None)
        response = staff.alice.post(f"{ORG}/models/edit/{model.registry_id}", data, headers=HTMX)
        assert response.status_code in (200, 204), response.content.decode()[:2000]
        assert "HX-Redirect" in response.headers or "HX-Location" in response.headers, (
            response.content.decode()[:2000]
        )
    kept = {
        m.registry_id: m.get_auth()
        for m in RegistryModel.objects.filter(pk__in=[m.pk for m in models])
    }
    assert kept["acme:w5-key"]["value"] == KEY_SECRET
    assert kept["acme:w5-headers"]["headers"]["X-Provider-Key"] == HEADER_SECRET
    assert kept["acme:w5-composite"]["strategies"][1]["headers"]["X-H"] == HEADER_SECRET
    for url, html in pages_of(staff, models):
        searched += assert_no_secret(url, html, ciphertexts)
    record(
        "G10", write_only_pages=2 * len(pages), write_only_places_searched=searched, secret_leaks=0
    )


def test_the_checks_would_see_a_leak() -> None:
    """The reader finds a secret hidden in each way a page could carry it."""
    leaks = [
        f'<input type="password" name="auth_value" value="{KEY_SECRET}">',
        f'<div hx-vals=\'{{"k": "{KEY_SECRET}"}}\'></div>',
        f'<div data-key="{"".join(f"&#{ord(c)};" for c in KEY_SECRET)}"></div>',
        f'<script>const k = "{leaked_forms(KEY_SECRET)["unicode escapes"]}";</script>',
        f'<a href="/x?k={quote_plus(KEY_SECRET)}">x</a>',
        f"<p>{base64.b64encode(KEY_SECRET.encode()).decode()}</p>",
        f"<textarea>…{KEY_SECRET[-WINDOW:]}</textarea>",
    ]
    for html in leaks:
        with pytest.raises(AssertionError):
            assert_no_secret("leak", html, [])
    with pytest.raises(AssertionError, match="ciphertext"):
        assert_no_secret(
            "leak", "<p>gAAAAABmZ2h0aGlzIGlzIG5vdCByZWFs</p>", ["gAAAAABmZ2h0aGlzIGlzIG5vdCByZWFs"]
        )
    assert_no_secret("clean", '<input type="password" name="auth_value">', ["gAAAA" * 10])
