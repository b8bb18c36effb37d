"""Real-browser fixtures: Chromium driven by Playwright against the live ASGI server.

- `browser` (session): one headless Chromium, Debian's `/usr/bin/chromium` (Playwright's own
  browsers are never downloaded). The test module skips itself when that binary is missing.
- `web` (per test): a fresh browser context at 1280×800 on the live server (`live_url`), with
  helpers to sign in through the real login form, save screenshots and watch for dialogs and
  uncaught page errors (any page error fails the test).
- `team`: Django users for the dashboard, committed (`transactional_db`) so that the server
  thread sees them: `root` (superuser: cluster admin), `alice` (org admin of `org-acme`), `bob`
  (member of `org-acme`); `org-globex` exists too.
- `upstream`: the loopback test upstream (`tests.upstream_server`), allowed as a model network.

Playwright's sync API keeps its asyncio loop marked as *running* in the calling thread between
calls, and Django refuses ORM calls in a thread with a running loop (SynchronousOnlyOperation).
The loop is therefore hidden from Django whenever no browser test is active (so database
fixtures and every later test in the session work), and a test body wraps its own ORM calls in
`with orm():`. The live server runs in its own thread and loop, where Django's checks stay on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from django.contrib.auth import get_user_model

from orgs.models import Membership, Org, Role
from orgs.services import create_org
from tests.upstream_server import UpstreamServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
PASSWORD = "correct horse battery staple 42"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TIMEOUT_MS = 10_000  # for actions and expect(); passing runs never wait this long


# ---------------------------------------------------------------------------------------------
# Playwright's event loop and Django's async-safety check


@contextmanager
def orm() -> Iterator[None]:
    """Run Django ORM code inside a browser test: hides Playwright's loop for the block."""
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


@dataclass
class BrowserSession:
    browser: Browser
    loop: asyncio.AbstractEventLoop

    @contextmanager
    def active(self) -> Iterator[None]:
        """Playwright calls need their loop marked as running (it is between calls)."""
        asyncio._set_running_loop(self.loop)
        try:
            yield
        finally:
            asyncio._set_running_loop(None)


@pytest.fixture(scope="session")
def browser() -> Iterator[BrowserSession]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # sync_playwright refuses to start inside a running asyncio loop: pytest has none here.
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            # Playwright turns the back/forward cache off; people's browsers have it on.
            ignore_default_args=["--disable-back-forward-cache"],
        )
    except BaseException:
        playwright.stop()
        raise
    session = BrowserSession(chromium, asyncio.get_running_loop())
    asyncio._set_running_loop(None)
    try:
        yield session
    finally:
        asyncio._set_running_loop(session.loop)
        chromium.close()
        playwright.stop()


# ---------------------------------------------------------------------------------------------
# People and the upstream


@dataclass
class Team:
    org: Org  # org-acme
    other_org: Org  # org-globex
    root: Any  # superuser: the dashboard's cluster admin, admin of every org
    alice: Any  # org-acme admin
    bob: Any  # org-acme member


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def team(transactional_db: Any) -> Team:
    with orm():  # also when set up after `web`
        org = create_org("org-acme", "Acme")
        other = create_org("org-globex", "Globex")
        users = get_user_model().objects
        root = users.create_user("root", "root@example.com", PASSWORD, is_superuser=True)
        alice = users.create_user("alice", "alice@example.com", PASSWORD)
        bob = users.create_user("bob", "bob@example.com", PASSWORD)
        Membership.objects.create(user=alice, org=org, role=Role.ADMIN)
        Membership.objects.create(user=bob, org=org, role=Role.MEMBER)
    return Team(org, other, root, alice, bob)


@pytest.fixture
def upstream(settings: Any) -> Iterator[UpstreamServer]:
    """The stand-in provider on loopback; the live server is in-process, so the setting holds."""
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _gateway_state(transactional_db: Any) -> Iterator[None]:
    """Fresh rate-limit windows; usage records written before the database is emptied."""
    from gateway import limits, usage

    limits.reset_local()
    yield
    usage.flush()
    limits.reset_local()


# ---------------------------------------------------------------------------------------------
# The browser side of a test


def _serve_static(route: Route) -> None:
    """Static files straight from the finders: with DEBUG off (as under pytest) Django does
    not serve them, and a reverse proxy would in production."""
    from django.contrib.staticfiles import finders

    name = unquote(urlsplit(route.request.url).path).removeprefix("/static/")
    found = finders.find(name) if name and ".." not in name else None
    if not found:
        route.fulfill(status=404, body="not found")
        return
    route.fulfill(path=str(found))


@dataclass
class Web:
    """One test's browser context and page, with the helpers the scenarios share."""

    context: BrowserContext
    page: Page
    base_url: str
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def sign_in(self, user: Any, then: str = "", password: str = PASSWORD) -> None:
        """Through the real login form, as a person would; lands on the path `then` (the
        login form's `next`) or on the start page."""
        from playwright.sync_api import expect

        page = self.page
        page.goto(self.url(f"/login?next={quote(then)}" if then else "/login"))
        page.get_by_label("Username").fill(user.username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        if then:
            expect(page).to_have_url(self.url(then))

    def screenshot(self, name: str) -> None:
        """docs/screenshots/<name>.png, only with SCREENSHOTS=1 (CI leaves them alone)."""
        if os.environ.get("SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True, type="png")


@pytest.fixture
def web(
    browser: BrowserSession, live_url: str, transactional_db: Any, _gateway_state: None
) -> Iterator[Web]:
    from playwright.sync_api import expect

    with browser.active():
        expect.set_options(timeout=TIMEOUT_MS)
        context = browser.browser.new_context(base_url=live_url, viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        context.route(f"{live_url}/static/**", _serve_static)
        page = context.new_page()
        web = Web(context, page, live_url)

        def on_dialog(dialog: Any) -> None:
            web.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: web.page_errors.append(str(error)))
        try:
            yield web
        finally:
            context.close()
    assert not web.page_errors, f"uncaught errors in the page: {web.page_errors}"
