"""Shared fixtures: personas, factories and a live ASGI server driven by the official clients.

Personas: org A (`org-acme`) has an admin key (alice), a member key (bob) and a cluster-admin key
(carol); org B (`org-globex`) has an admin key (dave); `revoked` is a revoked key of org A.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from orgs.models import ApiKey, Org, Role
from orgs.services import create_org, issue_api_key, revoke_api_key
from registry.cluster import reset_cluster_registry

pytest_plugins = ["tests.canary"]

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "sk-canary-5f1c2b7e-provider-secret"


@pytest.fixture(autouse=True)
def _cluster_registry(settings: Any) -> Iterator[None]:
    settings.CLUSTER_REGISTRY_PATH = FIXTURES / "cluster_registry.yaml"
    reset_cluster_registry()
    yield
    reset_cluster_registry()


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No request anywhere in the suite may end in a 500: fail the test that caused one."""
    yield
    errors = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR
        and (
            r.name == "dashboard.api"
            or (r.name == "django.request" and "Internal Server" in r.getMessage())
        )
    ]
    assert not errors, f"server errors during the test: {errors}"


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    """Each test starts with empty caches (Redis in CI: locks, preflight results, generation)."""
    from django.core.cache import cache

    from orgs import hotcache

    cache.clear()
    hotcache.clear()
    yield
    hotcache.clear()


@pytest.fixture(autouse=True)
def _quiet_usage_writes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The live server writes usage records from a background task. Around a test with a
    database, records left over from an earlier test are dropped, and at the end the buffer is
    written and background writes paused before the database is emptied (an insert racing the
    TRUNCATE deadlocks on PostgreSQL)."""
    from gateway import usage

    uses_db = any(
        name in request.fixturenames for name in ("transactional_db", "world", "live_url")
    )
    if not uses_db:
        yield
        return
    # Set the database up first so that it is torn down after the pause below.
    request.getfixturevalue("transactional_db")
    usage.resume_background_writes(discard=True)
    yield
    usage.flush()
    usage.pause_background_writes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def database_unreachable() -> Iterator[None]:
    """Inside the block, this process's database connection points where nothing answers (a
    free port on PostgreSQL, a missing directory on SQLite); it is restored afterwards."""
    from django.db import connection

    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict["PORT"] = str(free_port())  # nothing listens there
    else:
        connection.settings_dict["NAME"] = "/nonexistent-dir/db.sqlite3"
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


@pytest.fixture(scope="session")
def live_url(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The project's ASGI application served by uvicorn on a free loopback port."""
    from dashboard.asgi import application
    from tests.canary import scan_asgi

    port = free_port()
    config = uvicorn.Config(
        scan_asgi(application), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = _ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the ASGI test server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)
    with django_db_blocker.unblock():
        _drop_other_connections()


def _drop_other_connections() -> None:
    """Close connections the server's worker threads may still hold, so that PostgreSQL lets
    the test database be dropped at the end of the session."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@dataclass
class Persona:
    org: Org
    key: ApiKey
    token: str


@dataclass
class World:
    org_a: Org
    org_b: Org
    alice: Persona  # org A admin
    bob: Persona  # org A member
    carol: Persona  # org A cluster admin (and org admin)
    dave: Persona  # org B admin
    revoked: Persona  # org A admin key, revoked


def make_persona(org: Org, role: str = Role.MEMBER, cluster_admin: bool = False) -> Persona:
    key, token = issue_api_key(org, role=role, cluster_admin=cluster_admin, name="test")
    return Persona(org=org, key=key, token=token)


@pytest.fixture
def world(transactional_db: Any) -> World:
    org_a = create_org("org-acme", "Acme")
    org_b = create_org("org-globex", "Globex")
    revoked = make_persona(org_a, Role.ADMIN)
    revoke_api_key(revoked.key)
    return World(
        org_a=org_a,
        org_b=org_b,
        alice=make_persona(org_a, Role.ADMIN),
        bob=make_persona(org_a, Role.MEMBER),
        carol=make_persona(org_a, Role.ADMIN, cluster_admin=True),
        dave=make_persona(org_b, Role.ADMIN),
        revoked=revoked,
    )


def model_body(model_id: str = "acme:chat-1", **overrides: Any) -> dict[str, Any]:
    """A valid add body in the camelCase wire form, with a canary secret."""
    body: dict[str, Any] = {
        "id": model_id,
        "provider": "openai-compatible",
        "modelId": "chat-1",
        "apiFormat": "completions",
        "apiProviderType": "openai",
        "created": 1704067200,
        "auth": {"type": "api-key", "value": SECRET},
        "capabilities": {"modalities": {"input": ["text"], "output": ["text"]}, "reasoning": False},
        "baseUrl": "https://models.example.com/v1",
        "contextWindow": 8192,
        "rpm": 60,
    }
    body.update(overrides)
    return body


@pytest.fixture
def make_model() -> Callable[..., Any]:
    """Create an org model through the service (not the API)."""
    from registry.services import add_model

    def make(org: Org, model_id: str = "acme:chat-1", **overrides: Any) -> Any:
        return add_model(org, model_body(model_id, **overrides), actor="test")

    return make


@pytest.fixture
def sdk_for(live_url: str) -> Iterator[Callable[..., Any]]:
    """`sdk_for(persona_or_token)`: a meetkai-mka1 client for the live server, retries off."""
    from meetkai_mka1 import SDK
    from meetkai_mka1.utils import BackoffStrategy, RetryConfig

    no_retry = RetryConfig("none", BackoffStrategy(0, 0, 1.0, 0), False)
    clients: list[Any] = []

    def make(who: Persona | str | None) -> Any:
        token = who.token if isinstance(who, Persona) else who
        client = SDK(bearer_auth=token, server_url=live_url, retry_config=no_retry)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def openai_for(live_url: str) -> Callable[..., Any]:
    from openai import OpenAI

    def make(who: Persona) -> Any:
        return OpenAI(base_url=f"{live_url}/api/v1/llm", api_key=who.token, max_retries=0)

    return make


@pytest.fixture
def http(live_url: str) -> Iterator[Any]:
    """A raw httpx client against the live server, for requests the SDK cannot make."""
    import httpx

    with httpx.Client(base_url=live_url, timeout=10) as client:
        yield client


def auth(who: Persona | str) -> dict[str, str]:
    token = who.token if isinstance(who, Persona) else who
    return {"Authorization": f"Bearer {token}"}
