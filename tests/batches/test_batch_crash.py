"""B1/B2/B10: a worker SIGKILLed twice in the middle of a batch, then restarted, finishes it with
every custom_id exactly once across the output and error files, and counts that add up."""

from __future__ import annotations

import time

from batches.models import Batch, BatchItem
from tests.batches.conftest import WORKER_SETTINGS, chat_lines, content, upload, wait_until
from tests.batches.test_batch_run import TERMINAL, create

LINES = 1000


def test_a_worker_killed_twice_mid_batch_loses_nothing(
    world, worker, batch_model, sdk_for, upstream
):
    model = batch_model(world.org_a, "acme:crash", "chunks@2+delay@10")
    sdk = sdk_for(world.bob)
    concurrency = int(WORKER_SETTINGS["BATCH_CONCURRENCY"])
    batch = create(sdk, upload(sdk, chat_lines(LINES, model)).id)
    for kill_at in (250, 600):
        wait_until(lambda n=kill_at: upstream.stats()["requests"] >= n, timeout=60, interval=0.002)
        worker.kill()  # SIGKILL: no warm shutdown, no chance to write anything
        assert sdk.llm.batches.get(batch_id=batch.id).status == "in_progress"
        # Only the lines in flight were charged an attempt, not the rest of the page read.
        charged = BatchItem.objects.filter(status="pending", attempts__gt=0).count()
        assert 0 < charged <= concurrency, charged
        worker.start()
    done = wait_until(
        lambda: (b := sdk.llm.batches.get(batch_id=batch.id)).status in TERMINAL and b,
        timeout=120,
        interval=0.1,
    )
    assert done.status == "completed", done
    output = content(sdk, done.output_file_id) if done.output_file_id else []
    failed = content(sdk, done.error_file_id) if done.error_file_id else []
    ids = [row["custom_id"] for row in output + failed]
    assert len(ids) == len(set(ids)) == LINES
    assert set(ids) == {f"req-{i}" for i in range(LINES)}
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (LINES, len(output), len(failed))
    assert failed == []  # two crashes stay under BATCH_LINE_MAX_ATTEMPTS
    assert not BatchItem.objects.filter(status="pending").exists()
    # Extra upstream calls are bounded: a line holds its slot until its result is written, so
    # at most `concurrency` lines (in flight or not yet written) run again per kill.
    extra = upstream.stats()["requests"] - LINES
    print(f"upstream calls beyond {LINES}: {extra}")
    assert 0 <= extra <= 2 * concurrency


def test_a_worker_asked_to_stop_hands_its_batch_back(world, worker, batch_model, sdk_for):
    """B10: a warm shutdown (SIGTERM) does not wait for the batch to end, and the next worker
    resumes it where it stopped."""
    model = batch_model(world.org_a, "acme:slow", "chunks@2+delay@100")
    sdk = sdk_for(world.bob)
    batch = create(sdk, upload(sdk, chat_lines(300, model)).id)
    wait_until(lambda: sdk.llm.batches.get(batch_id=batch.id).request_counts.completed >= 20)
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 10
    held = Batch.objects.get()
    assert (held.status, held.worker_id) == ("in_progress", "")
    assert 20 <= held.completed < 300
    worker.start()
    done = wait_until(
        lambda: (b := sdk.llm.batches.get(batch_id=batch.id)).status in TERMINAL and b,
        timeout=60,
        interval=0.1,
    )
    assert done.status == "completed" and done.request_counts.completed == 300
    assert set(BatchItem.objects.values_list("attempts", flat=True)) == {1}
