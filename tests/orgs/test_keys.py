"""`ApiKey.last_used_at` (issue 2 item 2): set when a key authenticates a request, never by a
refused one, and written at most once per `orgs.auth.LAST_USED_RESOLUTION` per key.

Two doors set it: the registry API (`orgs.auth.authenticate`, synchronous, throttled on the stored
value) and chat completions (`orgs.auth.aauthenticate`, the hot path: throttled in process and
written off the request path, so the tests wait for the write)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from orgs import auth as orgs_auth
from orgs.models import ApiKey
from tests.conftest import auth

REGISTRY = "/api/v1/llm/models/registry"
CHAT = "/api/v1/llm/chat/completions"


def last_used(persona: Any) -> datetime | None:
    return ApiKey.objects.get(pk=persona.key.pk).last_used_at


def set_last_used(persona: Any, when: datetime | None) -> None:
    ApiKey.objects.filter(pk=persona.key.pk).update(last_used_at=when)


def eventually(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def chat(http: Any, who: Any) -> Any:
    """An authenticated chat call (the model is unknown: the key is used, the request is not)."""
    body = {"model": "acme:no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    return http.post(CHAT, json=body, headers=auth(who))


@pytest.fixture(autouse=True)
def _fresh_hot_path_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path remembers when it last touched each key id in process: start empty."""
    monkeypatch.setattr(orgs_auth, "_last_touch", {})


def assert_recent(value: datetime | None, since: datetime) -> None:
    assert value is not None
    assert since - timedelta(seconds=1) <= value <= timezone.now() + timedelta(seconds=1)


# --- the registry API (orgs.auth.authenticate) -----------------------------------------------


def test_a_key_is_unused_until_its_first_call_and_stamped_by_it(world: Any, http: Any):
    assert last_used(world.alice) is None
    assert last_used(world.bob) is None
    started = timezone.now()
    response = http.get(REGISTRY, headers=auth(world.alice))
    assert response.status_code == 200, response.text
    assert_recent(last_used(world.alice), started)
    assert last_used(world.bob) is None  # only the key that was used


def test_a_refused_call_with_a_revoked_key_does_not_stamp_it(world: Any, http: Any):
    assert last_used(world.revoked) is None
    for path in (REGISTRY, f"{REGISTRY}/acme:chat-1", "/api/v1/llm/models/auto"):
        response = http.get(path, headers=auth(world.revoked))
        assert response.status_code == 401, response.text
    assert last_used(world.revoked) is None


def test_a_key_revoked_after_use_keeps_its_last_use(world: Any, http: Any):
    from orgs.services import revoke_api_key

    assert http.get(REGISTRY, headers=auth(world.alice)).status_code == 200
    stamped = last_used(world.alice)
    assert stamped is not None
    revoke_api_key(ApiKey.objects.get(pk=world.alice.key.pk))
    set_last_used(world.alice, stamped - timedelta(hours=1))  # well past the throttle
    assert http.get(REGISTRY, headers=auth(world.alice)).status_code == 401
    assert last_used(world.alice) == stamped - timedelta(hours=1)


def test_the_stamp_is_written_at_most_once_per_resolution(world: Any, http: Any):
    resolution = orgs_auth.LAST_USED_RESOLUTION
    assert resolution > timedelta(0)
    # Inside the resolution window: a call leaves the stored time alone.
    recent = timezone.now() - resolution / 2
    set_last_used(world.alice, recent)
    assert http.get(REGISTRY, headers=auth(world.alice)).status_code == 200
    assert last_used(world.alice) == recent
    # Past it: the next call moves it to now.
    old = timezone.now() - resolution - timedelta(seconds=5)
    set_last_used(world.alice, old)
    started = timezone.now()
    assert http.get(REGISTRY, headers=auth(world.alice)).status_code == 200
    assert_recent(last_used(world.alice), started)


# --- the hot path (orgs.auth.aauthenticate) --------------------------------------------------


def test_a_chat_call_stamps_the_key(world: Any, http: Any):
    assert last_used(world.bob) is None
    started = timezone.now()
    response = chat(http, world.bob)
    assert response.status_code in (400, 404), response.text  # authenticated, then refused
    assert_recent(eventually(lambda: last_used(world.bob), lambda v: v is not None), started)


def test_a_chat_call_with_a_revoked_key_does_not_stamp_it(world: Any, http: Any):
    response = chat(http, world.revoked)
    assert response.status_code == 401, response.text
    time.sleep(0.3)  # the write would be off the request path: give it time to (not) happen
    assert last_used(world.revoked) is None
    assert orgs_auth._last_touch.get(world.revoked.key.pk) is None


def test_the_hot_path_writes_at_most_once_per_resolution(
    world: Any, http: Any, monkeypatch: pytest.MonkeyPatch
):
    assert chat(http, world.bob).status_code in (400, 404)
    first = eventually(lambda: last_used(world.bob), lambda v: v is not None)
    assert first is not None
    # Rewind the stored time: within the resolution the hot path does not write again.
    rewound = first - timedelta(minutes=10)
    set_last_used(world.bob, rewound)
    for _ in range(3):
        assert chat(http, world.bob).status_code in (400, 404)
    time.sleep(0.3)
    assert last_used(world.bob) == rewound
    # With a resolution of zero every call writes: the next one stamps it again.
    monkeypatch.setattr(orgs_auth, "LAST_USED_RESOLUTION", timedelta(0))
    started = timezone.now()
    assert chat(http, world.bob).status_code in (400, 404)
    stamped = eventually(lambda: last_used(world.bob), lambda v: v != rewound)
    assert_recent(stamped, started)
