"""Batch chaos (RELIABILITY.md B1-B3, B10; goal G6): a real Celery worker subprocess is SIGKILLed
K times at random points while a batch's lines run, and once more in the middle of finalizing
(the env-armed failpoint `BATCH_FAILPOINT=during_finalize`: after the output blob is stored,
before its row exists). After each kill the worker is restarted; the batch must end in a
terminal state with every custom_id exactly once across the output and error files, counts that
add up, no half-written file served and no blob without its row, and a bounded number of extra
upstream calls.

CHAOS_LINES (default 200), CHAOS_RUNS (default 1), CHAOS_KILLS (default 5) and CHAOS_SEED size the
experiment; G6 asks for CHAOS_LINES=1000 CHAOS_RUNS=10.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from batches.models import Batch, BatchItem, File
from tests.batches import conftest as batch_fixtures
from tests.batches.conftest import WORKER_SETTINGS, chat_lines, content, upload
from tests.hardening.figures import record

# Fixtures of tests/batches/conftest.py used here (a real worker on the test database).
batch_env = batch_fixtures.batch_env
worker_process = batch_fixtures.worker_process
worker = batch_fixtures.worker
upstream = batch_fixtures.upstream
batch_model = batch_fixtures.batch_model
_batch_state = batch_fixtures._batch_state

LINES = int(os.environ.get("CHAOS_LINES", "200"))
RUNS = int(os.environ.get("CHAOS_RUNS", "1"))
KILLS = int(os.environ.get("CHAOS_KILLS", "5"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
TERMINAL = ("completed", "failed", "cancelled", "expired")
FAILPOINT = "during_finalize"


def _stored_blobs() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


class Supervisor:
    """Restarts the worker whenever it exits on its own, as a process supervisor would, and
    counts those exits: the kills are the test's, any other death is a finding."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.unplanned = 0

    def wait(self, check: Any, timeout: float, interval: float = 0.002) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if not self.worker.running:
                self.unplanned += 1
                print(f"the worker exited on its own:\n{self.worker.log()[-3000:]}")
                self.worker.kill()
                self.worker.start()
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout} s")
            time.sleep(interval)


def _one_run(
    sdk: Any, worker: Any, supervisor: Supervisor, upstream: Any, model: str, run: int, rng: Any
) -> tuple[Any, Any, int]:
    base_env = worker.env
    worker.stop()  # the batch starts with the armed worker below
    data = chat_lines(LINES, model, prefix=f"r{run}")
    batch = sdk.llm.batches.create(
        input_file_id=upload(sdk, data).id, endpoint="/v1/chat/completions"
    )
    upstream.reset()
    armed = {**base_env, "BATCH_FAILPOINT": FAILPOINT}
    # Kill points in upstream calls seen so far (re-runs included), spread over the batch.
    points = sorted(rng.sample(range(max(1, LINES // 20), max(2, LINES * 9 // 10)), KILLS))
    kills = 0
    try:
        worker.env = armed
        worker.start()
        for point in points:
            supervisor.wait(lambda p=point: upstream.stats()["requests"] >= p, timeout=120)
            worker.kill()  # SIGKILL, worker and beat: no warm shutdown, nothing written
            kills += 1
            worker.start()
        # The last kill: the armed worker kills itself while finalizing.
        supervisor.wait(
            lambda: not worker.running and FAILPOINT in worker.log(), timeout=180, interval=0.05
        )
        kills += 1
        worker.kill()  # reap its beat
        held = Batch.objects.get(public_id=batch.id)
        assert held.status == "finalizing", (held.status, worker.log()[-3000:])
        assert held.output_file_id is None and held.error_file_id is None
        # The output blob is stored but has no row: nothing can serve a file that is not whole.
        visible = sdk.llm.batches.get(batch_id=batch.id)
        assert visible.output_file_id is None and visible.status == "finalizing"
        worker.env = base_env
        worker.start()
        done = supervisor.wait(
            lambda: (b := sdk.llm.batches.get(batch_id=batch.id)).status in TERMINAL and b,
            timeout=180,
            interval=0.1,
        )
    finally:
        worker.env = base_env
        if not worker.running:
            worker.start()
    return batch, done, kills


def _check(sdk: Any, batch: Any, done: Any, run: int) -> dict[str, int]:
    assert done.status == "completed", done
    output = content(sdk, done.output_file_id) if done.output_file_id else []
    failed = content(sdk, done.error_file_id) if done.error_file_id else []
    ids = [row["custom_id"] for row in output + failed]
    expected = {f"r{run}-{i}" for i in range(LINES)}
    lost = len(expected - set(ids))
    duplicates = len(ids) - len(set(ids))
    assert lost == 0 and duplicates == 0, (lost, duplicates)
    assert set(ids) == expected
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (LINES, len(output), len(failed))
    held = Batch.objects.get(public_id=batch.id)
    assert not BatchItem.objects.filter(batch=held, status="pending").exists()
    # Served files are whole: the bytes and lines their rows promise, every line JSON.
    for file_id, rows in ((done.output_file_id, output), (done.error_file_id, failed)):
        if file_id is None:
            continue
        row = File.objects.get(public_id=file_id)
        raw = sdk.llm.files.content(file_id=file_id).read()
        assert len(raw) == row.bytes and raw.endswith(b"\n")
        assert row.line_count == len(rows)
    return {"lines": LINES, "lost": lost, "duplicates": duplicates, "failed": len(failed)}


def test_batch_survives_random_sigkills_and_a_kill_while_finalizing(
    world, worker, batch_model, sdk_for, upstream
):
    rng = random.Random(SEED)
    before = _stored_blobs()  # the session's storage may hold earlier tests' blobs
    print(f"CHAOS_SEED={SEED} lines={LINES} runs={RUNS} kills={KILLS}")
    model = batch_model(world.org_a, "acme:chaos", "chunks@2+delay@20")
    sdk = sdk_for(world.bob)
    concurrency = int(WORKER_SETTINGS["BATCH_CONCURRENCY"])
    totals = {"terminal": 0, "lost": 0, "duplicates": 0, "failed": 0, "kills": 0, "extra": 0}
    worst_extra = 0
    supervisor = Supervisor(worker)
    for run in range(RUNS):
        exits = supervisor.unplanned
        batch, done, kills = _one_run(sdk, worker, supervisor, upstream, model, run, rng)
        figures = _check(sdk, batch, done, run)
        extra = upstream.stats()["requests"] - LINES
        print(f"run {run}: {kills} kills, {extra} upstream calls beyond {LINES}")
        # A death re-runs at most the lines in flight or not yet written (BATCH_CONCURRENCY);
        # the finalize kill none.
        deaths = KILLS + supervisor.unplanned - exits
        assert 0 <= extra <= deaths * concurrency, (extra, deaths)
        totals["terminal"] += 1
        totals["lost"] += figures["lost"]
        totals["duplicates"] += figures["duplicates"]
        totals["failed"] += figures["failed"]
        totals["kills"] += kills
        totals["extra"] += extra
        worst_extra = max(worst_extra, extra)
    # No orphan: every stored blob belongs to a File row (inputs, outputs and error files).
    rows = set(File.objects.values_list("storage_name", flat=True))
    orphans = _stored_blobs() - before - rows
    assert not orphans, orphans
    record(
        "G6",
        runs=RUNS,
        lines_per_run=LINES,
        kills_per_run=KILLS + 1,
        kills_total=totals["kills"],
        terminal_runs=totals["terminal"],
        lost_lines=totals["lost"],
        duplicate_custom_ids=totals["duplicates"],
        failed_lines=totals["failed"],
        orphan_blobs=len(orphans),
        worker_concurrency=concurrency,
        max_extra_upstream_calls_per_run=worst_extra,
        extra_upstream_call_bound_per_run=KILLS * concurrency,
        unplanned_worker_exits=supervisor.unplanned,
        seed=SEED,
    )
