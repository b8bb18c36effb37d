"""Infrastructure faults with real parts (RELIABILITY.md I1, I3, I4, I6, A15; goals G7, G8).

The gateway runs as production-like `uvicorn dashboard.asgi:application` subprocesses (DEBUG off)
on the test database while threads keep sending API list, chat and dashboard-page requests.
Then a part fails for real: the gateway's PostgreSQL connections are terminated with
`pg_terminate_backend`, a table lock outlasts `statement_timeout`, or a private `redis-server`
is shut down (SHUTDOWN NOSAVE) or frozen (SIGSTOP) and brought back. Every answer meanwhile must
be a 200, a JSON 503 in the contract's shape (API) or a readable page (dashboard): never an HTML
500, a traceback or a hang; and every kind of request succeeds again within 5 s of the part's
return. The same private Redis serves as the Celery broker of a real worker (a batch created
while it is down still completes), and as the shared rate-limit store of two gateway processes
(rpm=N admits N of 10N concurrent requests).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import auth
from tests.hardening import faults_fixtures
from tests.hardening.faults_load import (
    CHAT,
    MODELS,
    Load,
    Outcome,
    api_chat,
    api_list,
    page,
    problems,
)
from tests.hardening.faults_servers import (
    Terminator,
    gateway_env,
    gateways,
    is_postgres,
    own_backend_pid,
)
from tests.hardening.figures import record

# Fixtures of tests/hardening/faults_fixtures.py used here.
faults_model = faults_fixtures.faults_model
faults_upstream = faults_fixtures.faults_upstream
private_redis = faults_fixtures.private_redis
session_cookie = faults_fixtures.session_cookie

PAGE = "/orgs/org-acme/models"
ROUNDS = 10
RECOVERY_SECONDS = 5.0
KINDS = ["list", "chat", "page"]
# Redis clients in the gateway use 2 s socket timeouts; an answer may wait on a few of them
# (a pooled connection, then the command) but never indefinitely.
REDIS_HANG_BOUND = 8.0


def needs_postgres() -> None:
    if not is_postgres():
        pytest.skip(
            "PostgreSQL only: SQLite has no server connections to terminate and no "
            "statement_timeout (set DATABASE_URL to a PostgreSQL database to run this)"
        )


def load_for(urls: list[str], token: str, model: str, cookie: str) -> Load:
    return Load(
        urls,
        [api_list(token), api_chat(token, model), page(PAGE, cookie)],
        list(KINDS),
    )


def all_problems(outcomes: list[Outcome]) -> list[str]:
    return [problem for outcome in outcomes for problem in problems(outcome)]


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts = Counter(f"{o.kind}:{o.status}" for o in outcomes)
    return dict(sorted(counts.items()))


def html_500s(outcomes: list[Outcome]) -> int:
    return sum(
        1 for o in outcomes if o.status >= 500 and "html" in o.content_type and o.status != 503
    )


# ---------------------------------------------------------------------------------------------
# I1: PostgreSQL connections killed under load


@pytest.mark.parametrize("conn_max_age", ["0", "60"], ids=["fresh-connections", "persistent"])
def test_postgres_connections_killed_under_load(
    world, tmp_path, faults_model, session_cookie, conn_max_age
):
    needs_postgres()
    model = faults_model()
    keep = {own_backend_pid()}
    recoveries: list[float] = []
    killed = 0
    with gateways(tmp_path, world.bob.token, DATABASE_CONN_MAX_AGE=conn_max_age) as [gateway]:
        load = load_for([gateway.url], world.bob.token, model, session_cookie).start()
        terminator = Terminator(keep)
        try:
            time.sleep(0.5)
            for _ in range(ROUNDS):
                killed += terminator.kill_all()
                since = time.monotonic()
                recovered = load.wait_all_ok(since, RECOVERY_SECONDS)
                assert recovered is not None, (
                    f"not every kind of request succeeded within {RECOVERY_SECONDS} s: "
                    f"{summary(load.snapshot())}"
                )
                recoveries.append(recovered)
        finally:
            load.stop()
            terminator.close()
        errors = gateway.errors()
    outcomes = load.snapshot()
    print(f"{killed} connections terminated; answers {summary(outcomes)}")
    assert not all_problems(outcomes), all_problems(outcomes)[:10]
    assert html_500s(outcomes) == 0
    assert not errors, errors[:10]
    assert max(recoveries) <= RECOVERY_SECONDS
    record(
        "G8",
        **{
            f"pg_kill_{conn_max_age}s_rounds": ROUNDS,
            f"pg_kill_{conn_max_age}s_connections_terminated": killed,
            f"pg_kill_{conn_max_age}s_requests": len(outcomes),
            f"pg_kill_{conn_max_age}s_failed_503": sum(1 for o in outcomes if o.status == 503),
            f"pg_kill_{conn_max_age}s_html_500s": html_500s(outcomes),
            f"pg_kill_{conn_max_age}s_max_recovery_s": round(max(recoveries), 3),
        },
    )


# ---------------------------------------------------------------------------------------------
# I6: a held lock outlasts statement_timeout → 503, not a hang


def _locker() -> Any:
    import psycopg
    from django.db import connection

    conf = connection.settings_dict
    return psycopg.connect(
        host=conf.get("HOST") or "127.0.0.1",
        port=conf.get("PORT") or 5432,
        user=conf.get("USER") or None,
        password=conf.get("PASSWORD") or None,
        dbname=conf["NAME"],
    )


def test_held_lock_ends_in_503_at_statement_timeout(world, tmp_path, session_cookie):
    needs_postgres()
    from django.contrib.sessions.models import Session

    from orgs.models import ApiKey

    tables = [ApiKey._meta.db_table, Session._meta.db_table]
    with gateways(tmp_path, world.bob.token, DATABASE_STATEMENT_TIMEOUT_MS="500") as [gateway]:
        with httpx.Client(base_url=gateway.url, timeout=15) as client:
            locker = _locker()
            try:
                with locker.transaction():
                    for table in tables:
                        locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
                    listed = client.get(MODELS, headers=auth(world.bob))
                    shown = client.get(PAGE, headers={"Cookie": f"sessionid={session_cookie}"})
            finally:
                locker.close()
            assert listed.status_code == 503, listed.text
            assert listed.headers["content-type"].startswith("application/json")
            error = listed.json()["error"]
            assert error["code"] == 503 and error["type"] == "service_unavailable"
            assert "database" in error["message"]
            assert listed.headers.get("retry-after") == "1"
            assert shown.status_code == 503, shown.text[:300]
            assert "<h1>" in shown.text and "Traceback" not in shown.text
            # The lock is gone: the same requests succeed at once.
            assert client.get(MODELS, headers=auth(world.bob)).status_code == 200
            again = client.get(PAGE, headers={"Cookie": f"sessionid={session_cookie}"})
            assert again.status_code == 200
        errors = gateway.errors()
    assert not errors, errors[:10]
    record("G8", statement_timeout_503=True)


# ---------------------------------------------------------------------------------------------
# I3 / I4: Redis stopped and restarted under load


def test_redis_stopped_and_restarted_under_load(
    world, tmp_path, faults_model, session_cookie, private_redis
):
    model = faults_model(rpm=1_000_000)  # rate-limited: every chat request needs Redis
    down: list[tuple[float, float]] = []
    recoveries: list[float] = []
    redis_url = private_redis.url(0)
    with gateways(tmp_path, world.bob.token, REDIS_URL=redis_url) as [gateway]:
        load = load_for([gateway.url], world.bob.token, model, session_cookie).start()
        try:
            time.sleep(0.5)
            for round_ in range(ROUNDS):
                # Shut down (its data is lost) or, every fifth round, frozen: connections are
                # accepted but nothing answers, so only the clients' timeouts end the wait.
                frozen = round_ % 5 == 4
                started = time.monotonic()
                if frozen:
                    private_redis.pause()
                else:
                    private_redis.stop()
                time.sleep(1.5)
                since = time.monotonic()
                down.append((started, since))
                if frozen:
                    private_redis.resume()
                else:
                    private_redis.start()
                recovered = load.wait_all_ok(since, RECOVERY_SECONDS)
                assert recovered is not None, (
                    f"not every kind of request succeeded within {RECOVERY_SECONDS} s of Redis "
                    f"returning: {summary(load.snapshot())}"
                )
                recoveries.append(recovered)
        finally:
            load.stop()
        errors = gateway.errors()
    outcomes = load.snapshot()
    print(f"answers {summary(outcomes)}")
    assert not all_problems(outcomes), all_problems(outcomes)[:10]
    assert html_500s(outcomes) == 0
    assert not errors, errors[:10]

    # While Redis was down, rate-limited chat failed closed: 503 with Retry-After, never a 200.
    def during_outage(o: Outcome) -> bool:
        return any(start + 0.3 <= o.started and o.finished <= end for start, end in down)

    refused = [o for o in outcomes if o.kind == "chat" and during_outage(o)]
    assert refused, "no chat request ran while Redis was down"
    assert {o.status for o in refused} == {503}, Counter(o.status for o in refused)
    for outcome in refused:
        error = json.loads(outcome.body)["error"]
        assert error["type"] == "service_unavailable", error
    # No request waited on Redis beyond its clients' timeouts.
    slowest = max(o.elapsed for o in outcomes)
    assert slowest <= REDIS_HANG_BOUND, slowest
    record(
        "G8",
        redis_rounds=ROUNDS,
        redis_requests=len(outcomes),
        redis_chat_refused_503_while_down=len(refused),
        redis_html_500s=html_500s(outcomes),
        redis_max_recovery_s=round(max(recoveries), 3),
        redis_slowest_answer_s=round(slowest, 3),
    )


# ---------------------------------------------------------------------------------------------
# G7 / A15: rpm=N, 10N concurrent requests over two processes sharing Redis


def _chat(url: str, token: str, model: str, barrier: threading.Barrier) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=20) as client:
        barrier.wait(timeout=20)
        return client.post(
            CHAT,
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"},
        )


@pytest.mark.parametrize(("rpm", "concurrent"), [(1, 20), (5, 50)])
def test_rpm_holds_across_two_processes_under_concurrency(
    world, tmp_path, faults_model, faults_upstream, private_redis, rpm, concurrent
):
    model = faults_model(rpm=rpm)
    env = {"REDIS_URL": private_redis.url(0)}
    with gateways(tmp_path, world.bob.token, count=2, **env) as pair:
        urls = [gateway.url for gateway in pair]
        faults_upstream.reset()
        barrier = threading.Barrier(concurrent)
        with ThreadPoolExecutor(max_workers=concurrent) as pool:
            responses = list(
                pool.map(
                    lambda i: _chat(urls[i % 2], world.bob.token, model, barrier),
                    range(concurrent),
                )
            )
        errors = [line for gateway in pair for line in gateway.errors()]
    counts = Counter(r.status_code for r in responses)
    admitted = counts[200]
    upstream_calls = sum(
        1 for r in faults_upstream.requests() if r["path"].endswith("/chat/completions")
    )
    assert admitted <= rpm, counts
    assert counts == {200: rpm, 429: concurrent - rpm}, counts
    assert upstream_calls == admitted
    for response in responses:
        if response.status_code == 429:
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"]["type"] == "rate_limit_error"
            retry_after = response.headers.get("retry-after", "")
            # Requests are stamped with Redis's clock inside the atomic step, whichever
            # process sent them: the wait never exceeds the 60-second window.
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    assert not errors, errors[:10]
    record(
        "G7",
        **{
            f"rpm{rpm}_concurrent": concurrent,
            f"rpm{rpm}_processes": 2,
            f"rpm{rpm}_admitted": admitted,
            f"rpm{rpm}_overshoot": max(0, admitted - rpm),
            f"rpm{rpm}_rejected_429": counts[429],
            f"rpm{rpm}_upstream_calls": upstream_calls,
        },
    )


# ---------------------------------------------------------------------------------------------
# I3: a registry write while Redis is unreachable must not leave stale caches behind


def test_model_removed_while_redis_is_unreachable(world, tmp_path, faults_model, private_redis):
    from registry.models import RegistryModel

    model = faults_model()
    chat = api_chat(world.bob.token, model)
    with (
        gateways(tmp_path, world.bob.token, REDIS_URL=private_redis.url(0)) as [gateway],
        httpx.Client(base_url=gateway.url, timeout=15) as client,
    ):
        assert chat(client).status_code == 200  # the route is now cached in the process
        private_redis.pause()  # a blip: Redis keeps its data
        try:
            removed = client.delete(
                f"/api/v1/llm/models/registry/{model}", headers=auth(world.alice)
            )
        finally:
            private_redis.resume()
        after = chat(client)
    assert removed.status_code in (200, 204, 503), removed.text
    exists = RegistryModel.objects.filter(org=world.org_a, registry_id=model).exists()
    if removed.status_code == 503:
        assert exists, "the removal answered 503 but was committed"
    else:
        assert not exists
        assert after.status_code == 404, after.text


# ---------------------------------------------------------------------------------------------
# I4 / G8: Redis as the Celery broker stops and returns empty while a worker runs


def _batch_lines(model: str, prefix: str, count: int) -> bytes:
    rows = [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(count)
    ]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _start_batch(client: httpx.Client, who: Any, model: str, prefix: str) -> str:
    files = {"file": (f"{prefix}.jsonl", _batch_lines(model, prefix, 10), "application/jsonl")}
    uploaded = client.post(
        "/api/v1/llm/files", files=files, data={"purpose": "batch"}, headers=auth(who)
    )
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(
        "/api/v1/llm/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        headers=auth(who),
    )
    assert created.status_code == 200, created.text
    return created.json()["id"]


def _wait_batch(
    client: httpx.Client, who: Any, batch_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get(f"/api/v1/llm/batches/{batch_id}", headers=auth(who)).json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch['status']}"
        time.sleep(0.2)


def test_broker_redis_restarted_empty_loses_no_batch(
    world, tmp_path, faults_model, session_cookie, private_redis
):
    from tests.batches.conftest import WORKER_SETTINGS, Worker

    model = faults_model(rpm=1_000_000)
    media = tmp_path / "media"
    media.mkdir()
    env = {
        "REDIS_URL": private_redis.url(0),
        "CELERY_BROKER_URL": private_redis.url(1),
        "CELERY_QUEUE": f"faults-{uuid.uuid4().hex[:8]}",
        "MEDIA_ROOT": str(media),
        **WORKER_SETTINGS,
    }
    worker = Worker(gateway_env(**env), tmp_path)
    with gateways(tmp_path, world.bob.token, **env) as [gateway]:
        worker.start()
        try:
            with httpx.Client(base_url=gateway.url, timeout=15) as client:
                before = _wait_batch(
                    client, world.bob, _start_batch(client, world.bob, model, "up")
                )
                private_redis.stop()
                # The broker is gone: a batch is still accepted (the reconciler enqueues it
                # later), and the dashboard's batch page still loads.
                during = _start_batch(client, world.bob, model, "down")
                shown = client.get(
                    "/orgs/org-acme/batches", headers={"Cookie": f"sessionid={session_cookie}"}
                )
                time.sleep(1.0)
                private_redis.start()  # empty: any message queued before is gone too
                after = _wait_batch(client, world.bob, during)
                alive = worker.running
        finally:
            worker.stop()
        errors = gateway.errors()
    assert shown.status_code == 200, shown.text[:300]
    for batch in (before, after):
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert alive, worker.log()
    assert not errors, errors[:10]
    record("G8", broker_restarts=1, broker_batches_lost=0, broker_worker_survived=alive)
