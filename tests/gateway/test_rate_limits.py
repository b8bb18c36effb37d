"""Request-rate limits on chat: a model's `rpm` and its `rateLimits` scopes (api-contract.md §2.2,
§5.5; RELIABILITY.md A15): 429 in the contract shape with Retry-After, refused requests use no
quota, concurrency cannot overshoot, and the limit holds across two web processes (Redis).

Every test uses model ids unique to the run, and removes the Redis windows of those ids, so that
runs and tests never share a window.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings as django_settings

from tests.conftest import FIXTURES, auth, free_port, model_body
from tests.gateway_process import gateway_command

CHAT = "/api/v1/llm/chat/completions"
STREAM = "/api/v1/llm/chat/completions/stream"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Helpers


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(django_settings.REDIS_URL, socket_timeout=2)


def _flush_windows(model_ids: list[str]) -> None:
    if not django_settings.REDIS_URL:
        return
    client = _redis()
    try:
        for model_id in model_ids:
            keys = list(client.scan_iter(match=f"gw:rl:*:{model_id}:*", count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def limited(world: Any, upstream: Any) -> Iterator[Any]:
    """`limited(rpm=..., rateLimits=[...], org=...)`: a fresh org model served by the upstream
    (`chunks@1`); without `rpm` the model has no model-level rpm, only its rateLimits."""
    from registry.services import add_model

    made: list[str] = []

    def make(org: Any = None, model_id: str | None = None, **overrides: Any) -> str:
        model_id = model_id or f"acme:rl-{uuid.uuid4().hex[:10]}"
        fields = model_body(model_id, modelId="chunks@1", baseUrl=upstream.url + "/v1")
        fields.pop("rpm")
        fields.update(overrides)
        add_model(org or world.org_a, fields, actor="test")
        made.append(model_id)
        _flush_windows([model_id])
        return model_id

    yield make
    _flush_windows(made)


def chat(
    client: httpx.Client, who: Any, model: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        CHAT,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={**auth(who), **(headers or {})},
        timeout=15,
    )


def assert_429(response: httpx.Response) -> int:
    """A 429 in the contract shape with Retry-After; returns Retry-After in seconds."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == 429
    assert isinstance(error["message"], str) and error["message"]
    assert "param" in error
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    return int(retry_after)


def chat_requests(server: Any) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["path"].endswith("/chat/completions")]


def concurrent_statuses(
    urls: list[str], who: Any, model: str, count: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """`count` chat requests released together, round-robin over `urls`."""
    barrier = threading.Barrier(count)

    def one(index: int) -> httpx.Response:
        with httpx.Client(base_url=urls[index % len(urls)], timeout=20) as client:
            barrier.wait(timeout=10)
            return chat(client, who, model, headers)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


# ---------------------------------------------------------------------------------------------
# Model rpm


def test_rpm_admits_n_then_429(world, http, limited, upstream):
    model_id = limited(rpm=3)
    for _ in range(3):
        response = chat(http, world.bob, model_id)
        assert response.status_code == 200, response.text
    refused = chat(http, world.bob, model_id)
    retry_after = assert_429(refused)
    assert retry_after <= 60
    assert "Traceback" not in refused.text
    # A refused request never reaches the upstream.
    assert len(chat_requests(upstream)) == 3


def test_rpm_applies_to_both_endpoints_and_stream_form(world, http, limited, upstream):
    model_id = limited(rpm=2)
    body = {"model": model_id, "messages": [{"role": "user", "content": "x"}], "stream": True}
    first = http.post(CHAT, json=body, headers=auth(world.bob))
    assert first.status_code == 200
    second = http.post(
        STREAM,
        json={**body, "messages": [{"role": "user", "content": "y"}]},
        headers=auth(world.bob),
    )
    assert second.status_code == 200
    assert b"event: done" in second.content
    assert_429(http.post(STREAM, json={**body, "stream": False}, headers=auth(world.bob)))
    assert_429(http.post(CHAT, json=body, headers=auth(world.bob)))
    assert len(chat_requests(upstream)) == 2


def test_concurrent_requests_never_overshoot(world, live_url, limited, upstream):
    model_id = limited(rpm=5)
    responses = concurrent_statuses([live_url], world.bob, model_id, 20)
    counts = Counter(r.status_code for r in responses)
    assert counts == {200: 5, 429: 15}, counts
    for response in responses:
        if response.status_code == 429:
            assert_429(response)
    assert len(chat_requests(upstream)) == 5


def test_rpm_is_per_org_model(world, http, limited, upstream):
    """Two orgs that register the same model id have two models, each with its own quota."""
    model_id = f"shared:rl-{uuid.uuid4().hex[:10]}"
    limited(org=world.org_a, model_id=model_id, rpm=2)
    limited(org=world.org_b, model_id=model_id, rpm=2)
    for _ in range(2):
        assert chat(http, world.bob, model_id).status_code == 200
    assert_429(chat(http, world.bob, model_id))
    for _ in range(2):
        response = chat(http, world.dave, model_id)
        assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------
# Refused requests use no quota; duration windows


def test_refused_requests_use_no_quota(world, http, limited):
    model_id = limited(rateLimits=[{"scope": "org", "rpm": 2, "duration": 2}])
    for _ in range(2):
        assert chat(http, world.bob, model_id).status_code == 200
    admitted = time.monotonic()  # both admissions happened before this instant
    refused = 0
    while time.monotonic() - admitted < 1.7:  # keep hammering inside the window
        retry_after = assert_429(chat(http, world.bob, model_id))
        assert retry_after <= 2
        refused += 1
        time.sleep(0.1)
    assert refused >= 5
    # The admitted two have left the window by then; refusals made up to 1.7 s later must not
    # hold it shut.
    time.sleep(max(0.0, admitted + 2.2 - time.monotonic()))
    for _ in range(2):
        response = chat(http, world.bob, model_id)
        assert response.status_code == 200, response.text
    assert_429(chat(http, world.bob, model_id))


# ---------------------------------------------------------------------------------------------
# rateLimits scopes


def test_scope_api_key(world, http, limited):
    model_id = limited(rateLimits=[{"scope": "apiKey", "rpm": 2}])
    for who in (world.bob, world.alice):
        for _ in range(2):
            assert chat(http, who, model_id).status_code == 200
        assert_429(chat(http, who, model_id))
    # End users do not get around a key's limit.
    assert_429(chat(http, world.bob, model_id, {"X-On-Behalf-Of": "someone-else"}))


def test_scope_external_user(world, http, limited):
    model_id = limited(rateLimits=[{"scope": "externalUser", "rpm": 2}])
    for end_user in ("user-1", "user-2"):
        for _ in range(2):
            response = chat(http, world.bob, model_id, {"X-On-Behalf-Of": end_user})
            assert response.status_code == 200, response.text
        assert_429(chat(http, world.bob, model_id, {"X-On-Behalf-Of": end_user}))
    # The end user is the same person whichever key of the org calls for them.
    assert_429(chat(http, world.alice, model_id, {"X-On-Behalf-Of": "user-1"}))
    assert chat(http, world.alice, model_id, {"X-On-Behalf-Of": "user-3"}).status_code == 200


def test_scope_org(world, http, limited):
    model_id = limited(rateLimits=[{"scope": "org", "rpm": 3}])
    assert chat(http, world.bob, model_id).status_code == 200
    assert chat(http, world.alice, model_id).status_code == 200
    assert chat(http, world.bob, model_id, {"X-On-Behalf-Of": "u1"}).status_code == 200
    # The org's quota is shared by every key and end user.
    assert_429(chat(http, world.carol, model_id))
    assert_429(chat(http, world.alice, model_id, {"X-On-Behalf-Of": "u2"}))


def test_scope_duration(world, http, limited):
    model_id = limited(rateLimits=[{"scope": "apiKey", "rpm": 1, "duration": 1}])
    assert chat(http, world.bob, model_id).status_code == 200
    retry_after = assert_429(chat(http, world.bob, model_id))
    assert retry_after == 1
    time.sleep(1.1)
    assert chat(http, world.bob, model_id).status_code == 200


def test_rpm_and_rate_limits_both_apply(world, http, limited):
    model_id = limited(rpm=3, rateLimits=[{"scope": "apiKey", "rpm": 2}])
    assert chat(http, world.bob, model_id).status_code == 200
    assert chat(http, world.bob, model_id).status_code == 200
    assert_429(chat(http, world.bob, model_id))  # the key's 2
    assert chat(http, world.alice, model_id).status_code == 200
    assert_429(chat(http, world.carol, model_id))  # the model's 3


# ---------------------------------------------------------------------------------------------
# Across processes (Redis)


def _database_url() -> str:
    from django.db import connection

    params = connection.settings_dict
    engine = params["ENGINE"]
    if engine.endswith("sqlite3"):
        return "sqlite:///" + str(Path(params["NAME"]).resolve())
    if "postgresql" in engine:
        user = quote(params.get("USER") or "", safe="")
        password = quote(params.get("PASSWORD") or "", safe="")
        credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = params.get("HOST") or "localhost"
        port = f":{params['PORT']}" if params.get("PORT") else ""
        return f"postgres://{credentials}{host}{port}/{quote(params['NAME'], safe='')}"
    pytest.skip(f"no DATABASE_URL form for {engine}")
    raise AssertionError  # unreachable


def _start_gateway(port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(django_settings.VAR_DIR),
        "REDIS_URL": django_settings.REDIS_URL,
        "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
        "CLUSTER_REGISTRY_PATH": str(FIXTURES / "cluster_registry.yaml"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = gateway_command(port, "--lifespan", "off", "--log-level", "warning")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_ready(proc: subprocess.Popen[bytes], url: str, token: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the gateway subprocess exited ({proc.returncode}): {err[-2000:]}")
        try:
            response = httpx.get(
                f"{url}/api/v1/llm/models", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the gateway subprocess at {url} did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture
def two_gateways(world: Any) -> Iterator[list[str]]:
    if not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL is unset: limits are per process without Redis")
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(_start_gateway(port))
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            _wait_ready(proc, url, world.bob.token)
        yield urls
    finally:
        for proc in procs:
            _stop(proc)


def test_rpm_holds_across_two_processes(world, limited, upstream, two_gateways):
    rpm = 4
    model_id = limited(rpm=rpm)
    statuses = []
    for index in range(rpm + 4):  # alternate between the two processes
        with httpx.Client(base_url=two_gateways[index % 2], timeout=15) as client:
            response = chat(client, world.bob, model_id)
        if response.status_code == 429:
            assert_429(response)
        statuses.append(response.status_code)
    assert Counter(statuses) == {200: rpm, 429: 4}, statuses
    assert len(chat_requests(upstream)) == rpm

    # And concurrently: 12 requests released together over both processes, a fresh model.
    model_id = limited(rpm=rpm)
    responses = concurrent_statuses(two_gateways, world.bob, model_id, 12)
    counts = Counter(r.status_code for r in responses)
    assert counts == {200: rpm, 429: 12 - rpm}, counts
