"""The secrets canary (tests/canary.py) sees a leak in each place it watches: otherwise a
clean run of the suite would prove nothing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from orgs.models import Membership, Org
from tests import canary
from tests.conftest import SECRET


@pytest.fixture
def tally() -> Any:
    canary.TALLY.pending.clear()
    yield canary.TALLY
    canary.TALLY.pending.clear()  # the leaks below are planted: they must not fail this test


def test_a_secret_split_across_body_chunks_is_seen(tally: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": SECRET[:12].encode(), "more_body": True})
        await send({"type": "http.response.body", "body": SECRET[12:].encode()})

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(canary.scan_asgi(app)({"type": "http", "path": "/x"}, None, send))
    assert any("HTTP body of /x" in hit for hit in tally.pending)


def test_a_secret_in_a_header_is_seen(tally: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"x-debug", SECRET.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(canary.scan_asgi(app)({"type": "http", "path": "/h"}, None, send))
    assert any("header" in hit for hit in tally.pending)


def test_a_secret_in_a_log_traceback_is_seen(tally: Any) -> None:
    try:
        raise ValueError(f"upstream said Authorization: Bearer {SECRET}")
    except ValueError:
        logging.getLogger("gateway.chat").exception("call failed")
    assert any("log record gateway.chat" in hit for hit in tally.pending)


def test_a_full_api_key_in_a_log_is_seen(tally: Any) -> None:
    logging.getLogger("orgs").info("key mk_" + "A" * 43)
    assert tally.pending


def test_a_secret_in_the_database_is_seen(tally: Any, db: Any) -> None:
    org = Org.objects.create(slug="org-leaky", name=f"name {SECRET}")
    assert canary.CANARY.search(canary._dump_database())
    org.delete()
    assert not canary.CANARY.search(canary._dump_database())


def test_a_secret_in_a_test_client_response_is_seen(tally: Any, client: Any, db: Any) -> None:
    from django.contrib.auth.models import User

    Org.objects.create(slug="org-leaky", name=f"Leaky {SECRET}")
    user = User.objects.create_user("leaky", password="pw-leaky-123")
    Membership.objects.create(org=Org.objects.get(slug="org-leaky"), user=user, role="admin")
    client.force_login(user)
    page = client.get("/", follow=True)
    assert SECRET in page.content.decode()
    assert any("test-client body" in hit for hit in tally.pending)
    Org.objects.filter(slug="org-leaky").delete()
    user.delete()
