"""A rateLimits rule with `queue` makes requests wait for room instead of failing at once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import auth


def test_a_queued_request_waits_for_room_and_the_queue_is_bounded(world, gw_model, http):
    rule = {"scope": "global", "rpm": 1, "duration": 2, "queue": {"maxDepth": 1, "maxWaitMs": 4000}}
    gw_model(world.org_a, "acme:queued", "chunks@1", rateLimits=[rule])
    body = {"model": "acme:queued", "messages": [{"role": "user", "content": "hi"}]}

    def call() -> tuple[int, float]:
        start = time.monotonic()
        r = http.post("/api/v1/llm/chat/completions", json=body, headers=auth(world.bob))
        return r.status_code, time.monotonic() - start

    assert call()[0] == 200
    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(lambda _: call(), range(2)))
    (ok, waited), (refused, quick) = results
    assert ok == 200 and waited > 1.0  # it waited for the window to have room
    assert refused == 429 and quick < 1.0  # the queue holds one request: the other is refused


def test_a_queue_does_not_wait_past_max_wait(world, gw_model, http):
    rule = {"scope": "global", "rpm": 1, "duration": 30, "queue": {"maxDepth": 5, "maxWaitMs": 500}}
    gw_model(world.org_a, "acme:short", "chunks@1", rateLimits=[rule])
    body = {"model": "acme:short", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        http.post("/api/v1/llm/chat/completions", json=body, headers=auth(world.bob)).status_code
        == 200
    )
    start = time.monotonic()
    r = http.post("/api/v1/llm/chat/completions", json=body, headers=auth(world.bob))
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert time.monotonic() - start < 1.0  # room comes only in ~30 s: no point waiting
