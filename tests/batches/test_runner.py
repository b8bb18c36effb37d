"""`batches.runner` driven directly (no Celery worker runs): the lease, idempotent ingestion,
write-once results, idempotent finalization, poison lines, time slices and the reconciler."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from batches import runner, services
from batches.models import Batch, BatchItem, File
from orgs.auth import Caller
from orgs.errors import RateLimited
from tests.batches.conftest import chat_lines, jsonl, line, parse_jsonl, upload


@pytest.fixture
def make_batch(world, sdk_for, no_worker) -> Any:
    """`make_batch(data)`: a batch created through the service, as org A's member."""

    def make(data: bytes) -> Batch:
        file = upload(sdk_for(world.bob), data)
        caller = Caller(org=world.org_a, key=world.bob.key)
        batch = services.create_batch(
            caller, {"input_file_id": file.id, "endpoint": "/v1/chat/completions"}
        )
        return Batch.objects.select_related("org", "input_file").get(pk=batch.pk)

    return make


def test_a_second_run_of_a_held_batch_exits(make_batch):
    batch = make_batch(chat_lines(3, "acme:m"))
    assert runner.claim(batch.pk, "worker-a")
    assert runner.run_batch(batch.pk) == "busy"
    assert not runner.claim(batch.pk, "worker-b")
    # Once the holder's heartbeat is older than the lease, another worker may take over...
    Batch.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert runner.claim(batch.pk, "worker-b")
    # ...and the old holder can no longer write anything.
    assert not runner._fence(batch.pk, "worker-a")
    assert runner._fence(batch.pk, "worker-b")


def test_a_batch_that_fails_validation_reports_failed(make_batch):
    batch = make_batch(jsonl([line("same", "acme:m"), line("same", "acme:m")]))
    assert runner.run_batch(batch.pk) == "failed"
    batch.refresh_from_db()
    assert batch.status == "failed" and batch.worker_id in ("", None)


def test_ingestion_resumes_after_a_crash_without_duplicates(make_batch):
    batch = make_batch(chat_lines(2500, "acme:m"))
    assert runner.claim(batch.pk, "w")
    # A previous run died after its first chunk of items.
    BatchItem.objects.bulk_create(
        BatchItem(batch=batch, line=n, custom_id=f"req-{n - 1}", body={}) for n in range(1, 1001)
    )
    assert runner.ingest(batch, "w")
    batch.refresh_from_db()
    assert (batch.status, batch.total, batch.items_ready) == ("in_progress", 2500, True)
    assert BatchItem.objects.filter(batch=batch).count() == 2500
    assert batch.in_progress_at is not None


def test_a_result_is_written_and_counted_once(make_batch):
    batch = make_batch(chat_lines(1, "acme:m"))
    assert runner.claim(batch.pk, "w")
    assert runner.ingest(batch, "w")
    item = BatchItem.objects.get()
    run = runner._Run(batch, "w", Caller(org=batch.org, key=batch.api_key))
    first = runner._Outcome(pk=item.pk, status="succeeded", status_code=200, result={"n": 1})
    again = runner._Outcome(pk=item.pk, status="succeeded", status_code=200, result={"n": 2})
    assert run._persist([first])
    assert run._persist([again])  # a second execution of the same line
    item.refresh_from_db()
    assert item.result == {"n": 1}
    assert Batch.objects.get().completed == 1
    # A worker that lost its lease writes nothing.
    Batch.objects.update(worker_id="someone-else")
    assert not run._persist([again])


def test_finalizing_twice_or_after_a_crash_writes_one_file(make_batch, settings):
    batch = make_batch(chat_lines(3, "acme:m"))
    assert runner.claim(batch.pk, "w")
    assert runner.ingest(batch, "w")
    BatchItem.objects.filter(line=1).update(status="failed", error={"code": "x", "message": "y"})
    BatchItem.objects.exclude(line=1).update(
        status="succeeded", status_code=200, result={"ok": True}, request_id="req_1"
    )
    batch.refresh_from_db()
    output = runner.write_result_file(batch, "output")
    # A crash after the blob was written but before its row: the row is gone, the blob stays.
    File.objects.filter(pk=output.pk).delete()
    assert runner.finalize(batch, "w") == "completed"
    batch.refresh_from_db()
    assert batch.output_file.public_id == output.public_id
    assert File.objects.filter(purpose="batch_output").count() == 2
    with default_storage.open(batch.output_file.storage_name) as handle:
        assert len(handle.read().splitlines()) == 2
    # Finalizing again changes nothing.
    assert runner.write_result_file(batch, "output").pk == batch.output_file.pk
    assert runner.run_batch(batch.pk) == "busy"  # terminal: nothing to claim
    assert (batch.completed, batch.failed, batch.status) == (2, 1, "completed")


def test_a_line_that_kept_killing_its_worker_fails(make_batch, batch_model, world):
    model = batch_model(world.org_a, "acme:up")
    batch = make_batch(jsonl([line("poison", model), line("fine", model)]))
    assert runner.claim(batch.pk, "w")
    assert runner.ingest(batch, "w")
    BatchItem.objects.filter(custom_id="poison").update(attempts=3)
    runner.release(batch.pk, "w")
    assert runner.run_batch(batch.pk) == "completed"
    poison = BatchItem.objects.get(custom_id="poison")
    assert poison.status == "failed" and poison.error["code"] == "worker_lost"
    assert BatchItem.objects.get(custom_id="fine").status == "succeeded"


def test_a_time_slice_hands_the_batch_back(make_batch, batch_model, world, settings):
    settings.BATCH_SLICE_SECONDS = 0.5
    settings.BATCH_CONCURRENCY = 4
    model = batch_model(world.org_a, "acme:slow", "chunks@2+delay@50")
    batch = make_batch(chat_lines(200, model))
    assert runner.run_batch(batch.pk) == "yield"
    batch.refresh_from_db()
    assert batch.status == "in_progress" and batch.worker_id == ""
    assert 0 < batch.completed < 200
    # Lines that were queued but never started do not count an attempt.
    assert not BatchItem.objects.filter(status="pending", attempts__gt=0).exists()
    assert set(BatchItem.objects.filter(status="succeeded").values_list("attempts", flat=True)) == {
        1
    }
    settings.BATCH_SLICE_SECONDS = 60
    assert runner.run_batch(batch.pk) == "completed"
    assert Batch.objects.get().completed == 200


def test_the_reconciler_enqueues_only_orphans(make_batch):
    now = timezone.now()
    orphan = make_batch(chat_lines(1, "m"))  # never started; its enqueue is long ago
    held = make_batch(chat_lines(1, "m"))  # a live worker holds it
    dead = make_batch(chat_lines(1, "m"))  # its worker died
    done = make_batch(chat_lines(1, "m"))
    old = now - timedelta(minutes=10)
    Batch.objects.update(enqueued_at=old)
    Batch.objects.filter(pk=held.pk).update(worker_id="alive", heartbeat_at=now)
    Batch.objects.filter(pk=dead.pk).update(worker_id="dead", heartbeat_at=old)
    Batch.objects.filter(pk=done.pk).update(status="completed")
    assert runner.reconcile() == 2
    stamped = set(Batch.objects.filter(enqueued_at__gt=old).values_list("pk", flat=True))
    assert stamped == {orphan.pk, dead.pk}
    assert runner.reconcile() == 0  # just enqueued: not again within the lease


def test_a_result_the_database_refuses_fails_only_its_line(make_batch):
    batch = make_batch(chat_lines(2, "acme:m"))
    assert runner.claim(batch.pk, "w")
    assert runner.ingest(batch, "w")
    nul, fine = BatchItem.objects.order_by("line")
    run = runner._Run(batch, "w", Caller(org=batch.org, key=batch.api_key))
    assert run._persist(
        [
            runner._Outcome(pk=nul.pk, status="succeeded", result={"text": "a\x00b"}),
            runner._Outcome(pk=fine.pk, status="succeeded", result={"text": "ok"}),
        ]
    )
    nul.refresh_from_db()
    fine.refresh_from_db()
    assert fine.status == "succeeded"
    # SQLite stores NUL; PostgreSQL cannot, and the line fails instead of the whole write.
    assert nul.status == "succeeded" or nul.error["code"] == "unstorable_response"
    counts = Batch.objects.values_list("completed", "failed").get()
    assert sum(counts) == 2


def test_the_worker_enforces_the_line_limit_in_force_when_the_batch_runs(make_batch, settings):
    # Accepted at upload under the limit of the time; the limit was lowered before a worker ran it.
    batch = make_batch(chat_lines(5, "acme:m"))
    settings.BATCH_MAX_LINES = 3
    assert runner.run_batch(batch.pk) == "failed"
    batch.refresh_from_db()
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e["code"], e["line"]) for e in batch.errors["data"]] == [("too_many_requests", 4)]
    assert "at most 3 requests" in batch.errors["data"][0]["message"]
    assert batch.total == 0 and batch.output_file is None and batch.error_file is None
    assert not BatchItem.objects.exists()


# --- Retries of a line: backoff, Retry-After, connection errors and timeouts ------------------


def attempts(upstream: Any, model: str) -> list[float]:
    """When the upstream received each try of `model`'s lines (one line per model here)."""
    return sorted(
        r["time"]
        for r in upstream.requests()
        if r["path"].endswith("/completions") and r["body"]["model"] == model
    )


def error_lines(batch: Batch) -> dict[str, dict[str, Any]]:
    batch.refresh_from_db()
    assert batch.error_file is not None
    with runner.open_result(batch.error_file) as handle:
        return {row["custom_id"]: row for row in parse_jsonl(handle.read())}


def test_a_failing_line_is_retried_after_growing_waits(
    make_batch, batch_model, world, upstream, settings
):
    settings.BATCH_RETRY_BASE_SECONDS = base = 0.3
    settings.BATCH_LINE_MAX_ATTEMPTS = 4
    model = batch_model(world.org_a, "acme:broken", "fault-5xx")
    batch = make_batch(jsonl([line("boom", model)]))
    assert runner.run_batch(batch.pk) == "completed"
    times = attempts(upstream, "fault-5xx")
    assert len(times) == 4  # BATCH_LINE_MAX_ATTEMPTS tries, then the line fails
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Each wait is base x 2^(n-1) plus up to 25% jitter: at least that, and longer each time.
    for n, gap in enumerate(gaps):
        assert gap >= base * 2**n - 0.01, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert error_lines(batch)["boom"]["error"]["code"] == "upstream_error"


def test_backoff_starts_at_the_setting_doubles_and_is_capped(settings):
    settings.BATCH_RETRY_BASE_SECONDS = 2.0
    for tries, floor in ((1, 2.0), (2, 4.0), (3, 8.0)):
        waits = [runner._backoff(tries) for _ in range(50)]
        assert all(floor <= wait <= floor * 1.25 for wait in waits)
    assert runner._backoff(20) == runner.BACKOFF_MAX


def test_an_upstream_429_is_retried_after_its_retry_after(
    make_batch, batch_model, world, upstream, settings, monkeypatch
):
    # The stand-in upstream says `Retry-After: 7`; the cap is lowered so that the test is quick.
    settings.BATCH_RETRY_BASE_SECONDS = 0.01
    settings.BATCH_LINE_MAX_ATTEMPTS = 2
    monkeypatch.setattr(runner, "RETRY_AFTER_MAX", 1.0)
    model = batch_model(world.org_a, "acme:busy", "fault-429")
    batch = make_batch(jsonl([line("busy", model)]))
    assert runner.run_batch(batch.pk) == "completed"
    first, second = attempts(upstream, "fault-429")
    assert 0.95 <= second - first < 3.0  # Retry-After (capped), not the 0.01 s backoff
    row = error_lines(batch)["busy"]
    assert row["error"]["code"] == "rate_limited"
    assert row["response"]["status_code"] == 429
    # Below the cap the wait is the upstream's Retry-After; a bad one waits a second.
    monkeypatch.setattr(runner, "RETRY_AFTER_MAX", 60.0)
    assert runner._retry_after(RateLimited("x", headers={"Retry-After": "7"})) == 7.0
    assert runner._retry_after(RateLimited("x", headers={"Retry-After": "3600"})) == 60.0
    assert runner._retry_after(RateLimited("x", headers={"Retry-After": "soon"})) == 1.0


def test_connection_errors_and_timeouts_are_retried_then_land_in_the_error_file(
    make_batch, batch_model, world, upstream, settings
):
    settings.BATCH_RETRY_BASE_SECONDS = 0.05
    reset = batch_model(world.org_a, "acme:reset", "fault-reset")
    hang = batch_model(world.org_a, "acme:hang", "fault-hang", requestTimeoutMs=300)
    fine = batch_model(world.org_a, "acme:up")
    batch = make_batch(jsonl([line("reset", reset), line("hang", hang), line("fine", fine)]))
    assert runner.run_batch(batch.pk) == "completed"
    batch.refresh_from_db()
    assert (batch.completed, batch.failed) == (1, 2)
    tries = settings.BATCH_LINE_MAX_ATTEMPTS
    # A connection dropped before any response is also sent once more by the upstream client
    # itself (registry.upstream.send): two requests per try of the line.
    assert len(attempts(upstream, "fault-reset")) == 2 * tries
    assert len(attempts(upstream, "fault-hang")) == tries
    failed = error_lines(batch)
    assert set(failed) == {"reset", "hang"}
    assert failed["reset"]["error"]["code"] == "upstream_error"
    assert failed["reset"]["response"]["status_code"] == 502
    assert failed["hang"]["error"]["code"] == "request_timeout"
    assert failed["hang"]["response"]["status_code"] == 504
    assert "connection" in failed["reset"]["error"]["message"].lower(), failed["reset"]
    assert "in time" in failed["hang"]["error"]["message"], failed["hang"]
