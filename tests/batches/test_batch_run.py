"""Batches run by a real Celery worker (`celery -A dashboard worker`) against the stand-in
upstream: the whole lifecycle, line failures, cancel, expiry, limits and a broker outage."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.db import transaction
from meetkai_mka1 import errors

from batches.models import Batch, BatchItem
from gateway import usage
from gateway.models import UsageRecord
from orgs.services import revoke_api_key
from tests.batches.conftest import (
    WORKER_SETTINGS,
    chat_lines,
    content,
    jsonl,
    line,
    parse_jsonl,
    upload,
    wait_status,
    wait_until,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")


def create(sdk: Any, file_id: str, **kwargs: Any) -> Any:
    return sdk.llm.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", **kwargs)


def all_lines(sdk: Any, batch: Any, **kwargs: Any) -> tuple[list[dict], list[dict]]:
    output = content(sdk, batch.output_file_id, **kwargs) if batch.output_file_id else []
    failed = content(sdk, batch.error_file_id, **kwargs) if batch.error_file_id else []
    return output, failed


def assert_each_line_once(output: list[dict], failed: list[dict], total: int) -> None:
    ids = [row["custom_id"] for row in output + failed]
    assert len(ids) == len(set(ids)) == total


def upstream_models(upstream: Any) -> list[str]:
    return [r["body"]["model"] for r in upstream.requests() if r["path"].endswith("/completions")]


def test_a_batch_of_200_lines_completes_with_outputs_matching_inputs(
    world, worker, batch_model, sdk_for
):
    model = batch_model(world.org_a, "acme:echo", "echo")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(200, model))
    batch = create(sdk, file.id, metadata={"job": "eval"})
    assert batch.status == "validating" and batch.metadata == {"job": "eval"}
    done = wait_status(sdk, batch.id, TERMINAL)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (200, 200)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(done, stamp) >= done.created_at
    assert done.failed_at is None and done.cancelled_at is None
    output = content(sdk, done.output_file_id)
    assert len(output) == 200
    for row in output:
        index = int(row["custom_id"].removeprefix("req-"))
        assert row["id"].startswith("batch_req_") and row["error"] is None
        response = row["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        assert response["body"]["model"] == "acme:echo"
        echoed = json.loads(response["body"]["choices"][0]["message"]["content"])
        assert echoed["body"]["messages"][0]["content"] == f"hello {index}"
    out_file = sdk.llm.files.get(file_id=done.output_file_id)
    assert (out_file.purpose, out_file.filename) == ("batch_output", f"{done.id}_output.jsonl")
    assert sdk.llm.files.content(file_id=out_file.id).headers["content-type"] == "application/jsonl"
    assert out_file.id in [f.id for f in sdk.llm.files.list().data]
    # Another org cannot see the batch or download its output.
    other = sdk_for(world.dave)
    with pytest.raises(errors.NotFoundError):
        other.llm.files.content(file_id=done.output_file_id)
    with pytest.raises(errors.SDKError):
        other.llm.batches.get(batch_id=done.id)
    # Every line went through the gateway service: usage records name the batch endpoint.
    usage.flush()
    assert UsageRecord.objects.filter(endpoint="batch.chat.completions").count() == 200


def test_the_openai_client_runs_a_batch(world, worker, batch_model, openai_for):
    model = batch_model(world.org_a, "acme:up")
    client = openai_for(world.bob)
    data = chat_lines(20, model)
    file = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "a"},
    )
    assert batch.status == "validating"
    wait_until(lambda: client.batches.retrieve(batch.id).status in TERMINAL, timeout=60)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20
    output = parse_jsonl(client.files.content(done.output_file_id).read())
    assert sorted(r["custom_id"] for r in output) == sorted(f"req-{i}" for i in range(20))
    assert [b.id for b in client.batches.list().data] == [batch.id]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_a_cancelled_batch_keeps_what_finished(world, worker, batch_model, sdk_for, upstream):
    model = batch_model(world.org_a, "acme:slow", "chunks@2+delay@100")
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, chat_lines(200, model)).id)
    wait_until(lambda: sdk.llm.batches.get(batch_id=batch.id).request_counts.completed >= 16)
    cancelling = sdk.llm.batches.cancel(batch_id=batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert sdk.llm.batches.cancel(batch_id=batch.id).status in ("cancelling", "cancelled")
    done = wait_status(sdk, batch.id, TERMINAL)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == 200 and counts.completed + counts.failed == 200
    assert 16 <= counts.completed < 200
    output, failed = all_lines(sdk, done)
    assert_each_line_once(output, failed, 200)
    assert len(output) == counts.completed
    assert {row["error"]["code"] for row in failed} == {"batch_cancelled"}
    assert all(row["response"] is None for row in failed)
    # The worker stopped calling the upstream.
    calls = len(upstream_models(upstream))
    assert calls < 200
    with pytest.raises(errors.SDKError) as ended:
        sdk.llm.batches.cancel(batch_id=batch.id)
    assert ended.value.status_code == 409


def test_a_batch_whose_lines_all_fail_completes_without_an_output_file(
    world, worker, batch_model, sdk_for
):
    model = batch_model(world.org_a, "acme:refuses", "fault-4xx")
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, chat_lines(5, model)).id)
    done = wait_status(sdk, batch.id, TERMINAL)
    assert done.status == "completed"
    assert done.output_file_id is None and done.error_file_id is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 5)
    output, failed = all_lines(sdk, done)
    assert_each_line_once(output, failed, 5)
    for row in failed:
        assert row["error"]["code"] == "invalid_request"
        assert row["response"]["status_code"] == 400
        assert row["response"]["body"]["error"]["code"] == 400
    assert [b.id for b in sdk.llm.batches.list().data] == [done.id]


def test_file_level_defects_fail_the_batch_naming_lines(world, worker, sdk_for):
    rows = [line(f"r{i}", "acme:m") for i in range(8)]
    rows[2]["custom_id"] = "r0"  # line 3 repeats line 1's custom_id
    rows[4]["url"] = "/v1/embeddings"  # line 5: another endpoint
    rows[5]["body"]["stream"] = True  # line 6
    rows[6]["method"] = "GET"  # line 7
    del rows[7]["body"]["model"]  # line 8
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, jsonl(rows)).id)
    done = wait_status(sdk, batch.id, TERMINAL)
    assert done.status == "failed" and done.failed_at is not None
    data = [(e.code, e.line) for e in done.errors.data]
    assert data == [
        ("duplicate_custom_id", 3),
        ("invalid_url", 5),
        ("stream_not_supported", 6),
        ("invalid_method", 7),
        ("invalid_body", 8),
    ]
    assert "/v1/chat/completions" in done.errors.data[1].message
    assert done.errors.data[1].param == "url"
    assert done.request_counts.total == 0 and done.output_file_id is None
    assert BatchItem.objects.count() == 0


def test_a_failing_line_lands_in_the_error_file_while_others_finish(
    world, worker, batch_model, sdk_for, upstream
):
    good = batch_model(world.org_a, "acme:up")
    bad = batch_model(world.org_a, "acme:broken", "fault-5xx")
    rows = [line(f"ok-{i}", good) for i in range(10)]
    rows.insert(4, line("boom", bad))
    rows.insert(7, line("nobody", "acme:no-such-model"))
    rows.insert(9, line("malformed", good, temperature="hot"))
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, jsonl(rows)).id)
    done = wait_status(sdk, batch.id, TERMINAL)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (10, 3)
    output, failed = all_lines(sdk, done)
    assert_each_line_once(output, failed, 13)
    by_id = {row["custom_id"]: row for row in failed}
    assert by_id["boom"]["error"]["code"] == "upstream_error"
    assert by_id["boom"]["response"]["status_code"] == 502
    assert by_id["nobody"]["error"]["code"] == "model_not_found"
    assert by_id["malformed"]["error"]["code"] == "invalid_request"
    assert "temperature" in by_id["malformed"]["error"]["message"]
    # Upstream 5xx: retried up to BATCH_LINE_MAX_ATTEMPTS (3) times; 4xx: never.
    assert upstream_models(upstream).count("fault-5xx") == 3


def test_a_batch_past_its_window_expires_with_what_finished(
    world, worker, batch_model, sdk_for, settings
):
    settings.BATCH_COMPLETION_WINDOW_SECONDS = 3
    model = batch_model(world.org_a, "acme:slow", "chunks@2+delay@250")
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, chat_lines(100, model)).id)
    assert batch.expires_at == batch.created_at + 3
    done = wait_status(sdk, batch.id, TERMINAL, timeout=30)
    assert done.status == "expired" and done.expired_at is not None
    counts = done.request_counts
    assert counts.total == 100 and counts.completed + counts.failed == 100
    assert 0 < counts.completed < 100
    output, failed = all_lines(sdk, done)
    assert_each_line_once(output, failed, 100)
    assert {row["error"]["code"] for row in failed} == {"batch_expired"}


def test_an_end_users_batch_runs_as_that_end_user(world, worker, batch_model, sdk_for):
    model = batch_model(world.org_a, "acme:up")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(3, model), x_on_behalf_of="user-7")
    batch = create(sdk, file.id, x_on_behalf_of="user-7")
    done = wait_status(sdk, batch.id, TERMINAL, x_on_behalf_of="user-7")
    assert done.status == "completed"
    assert len(content(sdk, done.output_file_id, x_on_behalf_of="user-7")) == 3
    with pytest.raises(errors.NotFoundError):
        sdk.llm.files.content(file_id=done.output_file_id)
    usage.flush()
    records = UsageRecord.objects.filter(endpoint="batch.chat.completions")
    assert {(r.end_user, r.api_key_id) for r in records} == {("user-7", world.bob.key.pk)}


def test_lines_run_within_the_models_rate_limit(world, worker, batch_model, sdk_for, upstream):
    model = batch_model(
        world.org_a,
        "acme:limited",
        rpm=None,
        rateLimits=[{"scope": "global", "rpm": 5, "duration": 1}],
    )
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, chat_lines(12, model)).id)
    done = wait_status(sdk, batch.id, TERMINAL, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 12
    times = sorted(r["time"] for r in upstream.requests() if r["path"].endswith("/completions"))
    assert len(times) == 12
    # At most 5 requests in any one-second window (a little slack for clock reads).
    assert all(later - earlier >= 0.9 for earlier, later in zip(times, times[5:], strict=False))


def test_lines_run_with_bounded_concurrency(world, worker, batch_model, sdk_for, upstream):
    concurrency = int(WORKER_SETTINGS["BATCH_CONCURRENCY"])  # the worker's setting
    model = batch_model(world.org_a, "acme:slow", "chunks@1+delay@200")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(5 * concurrency, model))
    upstream.reset()
    batch = create(sdk, file.id)
    done = wait_status(sdk, batch.id, TERMINAL, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 5 * concurrency
    # Enough slow lines to fill every slot: several ran at once, never more than the setting.
    peak = upstream.stats()["peak_open_requests"]
    assert 1 < peak <= concurrency, peak


def test_a_revoked_key_fails_the_remaining_lines(world, worker, batch_model, sdk_for):
    model = batch_model(world.org_a, "acme:slow", "chunks@2+delay@100")
    sdk = sdk_for(world.alice)
    create(sdk, upload(sdk, chat_lines(100, model)).id)
    wait_until(lambda: Batch.objects.get().completed >= 8)
    with transaction.atomic():
        revoke_api_key(world.alice.key)
    wait_until(lambda: Batch.objects.get().status in TERMINAL, timeout=30)
    done = Batch.objects.get()
    assert done.status == "completed"
    assert done.completed + done.failed == 100 and done.failed > 0
    errors_ = BatchItem.objects.exclude(status="succeeded").values_list("error", flat=True)
    assert {error["code"] for error in errors_} == {"key_revoked"}


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """This process publishes to `url` for a while (the worker keeps its own broker)."""
    from dashboard.celery import app
    from tests.batches.conftest import _reset_producers

    names = ("broker_url", "broker_write_url", "broker_read_url", "broker_transport_options")
    saved = {name: app.conf[name] for name in names}
    app.conf.update(
        broker_url=url, broker_write_url=url, broker_read_url=url, broker_transport_options={}
    )
    _reset_producers(app)
    try:
        yield
    finally:
        app.conf.update(saved)
        _reset_producers(app)


def test_a_batch_whose_message_was_lost_still_runs(world, worker, batch_model, sdk_for):
    model = batch_model(world.org_a, "acme:up")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(5, model))
    with broker("memory://"):  # accepted, then lost: no worker ever sees it
        batch = create(sdk, file.id)
        time.sleep(0.2)
    assert batch.status == "validating"
    # The reconciler (beat, in the worker) enqueues it once its enqueue time is stale.
    done = wait_status(sdk, batch.id, TERMINAL, timeout=30)
    assert done.status == "completed" and done.request_counts.completed == 5


def test_a_broker_that_is_down_does_not_hold_up_create(world, worker, batch_model, sdk_for, caplog):
    model = batch_model(world.org_a, "acme:up")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(5, model))
    with broker("redis://127.0.0.1:1/0"):  # a closed port
        started = time.monotonic()
        batch = create(sdk, file.id)
        assert time.monotonic() - started < 2
        # The enqueue (off the request thread) gives up after the Redis client's retries.
        wait_until(lambda: "could not enqueue batch" in caplog.text, timeout=20, interval=0.1)
    assert batch.status == "validating"
    done = wait_status(sdk, batch.id, TERMINAL, timeout=30)
    assert done.status == "completed"


def test_a_batch_started_by_a_dashboard_user_runs_as_that_user(world, worker, batch_model, sdk_for):
    from django.contrib.auth import get_user_model

    from batches import services as batch_services
    from orgs.auth import Caller
    from orgs.models import Membership

    model = batch_model(world.org_a, "acme:user-echo", "echo")
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(5, model))
    user = get_user_model().objects.create_user("erin", password="pw-erin-123456")
    Membership.objects.create(user=user, org=world.org_a, role="member")
    caller = Caller.for_user(user, world.org_a, "member")
    stored = batch_services.get_file(Caller.for_key(world.bob.key), file.id)
    batch = batch_services.create_batch(
        caller,
        {"input_file_id": stored.public_id, "endpoint": "/v1/chat/completions"},
    )
    assert batch.api_key_id is None and batch.created_by_id == user.pk
    done = wait_status(sdk, batch.public_id, TERMINAL)
    assert done.status == "completed", done
    assert done.request_counts.completed == 5
