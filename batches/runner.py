"""Running a batch in a worker: validate its file into BatchItems, run the pending items through
the gateway (`gateway.chat.prepare` + `complete`, the same service as the API), and assemble the
output and error files.

Crash safety rests on three rules:

* **A lease.** A run first claims the batch (`worker_id`, `heartbeat_at`); a second run of the
  same batch (a redelivered or re-enqueued task) finds the lease fresh and exits. The owner
  heartbeats every second; the reconciler (`reconcile`, on beat) re-enqueues any active batch
  whose heartbeat is older than BATCH_LEASE_SECONDS, so a SIGKILLed worker's batch resumes.
* **Items are written once.** A result is stored with `UPDATE … WHERE status = 'pending'`, in the
  same transaction as the counters and a fence on the lease, so an item that runs twice (a crash
  between the upstream reply and the write) is recorded once and counted once.
* **Finalizing is idempotent.** Output and error files get ids derived from the batch id; a blob
  is written completely before its File row exists, and an existing row is reused.

A line that was in flight when its worker died counts an attempt; after BATCH_LINE_MAX_ATTEMPTS
such starts it fails (`worker_lost`) instead of killing workers forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import (
    DataError,
    IntegrityError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Count, F, Q
from django.utils import timezone

from batches import storage
from batches.jsonl import LineError, iter_lines
from batches.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Batch,
    BatchItem,
    BatchStatus,
    File,
    ItemStatus,
    Purpose,
)
from batches.uploads import JSONL
from orgs.auth import Caller
from orgs.errors import RateLimited, ServiceError, ServiceUnavailable
from orgs.models import ApiKey

logger = logging.getLogger(__name__)
T = TypeVar("T")

USAGE_ENDPOINT = "batch.chat.completions"  # how batch lines show up in usage records
INSERT_CHUNK = 1000
MAX_REPORTED_ERRORS = 100
MAX_CUSTOM_ID = 512
FLUSH_SECONDS = 0.1  # results are written as they come, and at least this often
BACKOFF_MAX = 30.0  # the longest wait between two tries of a line
RETRY_AFTER_MAX = 60.0  # an upstream's Retry-After is honoured up to this
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
FAILED_STATUSES = (ItemStatus.FAILED, ItemStatus.CANCELLED, ItemStatus.EXPIRED)

_stop = threading.Event()


def request_stop(**kwargs: Any) -> None:
    """`worker_shutting_down` handler: runs in this process hand their batches back."""
    _stop.set()


def worker_name() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _lease() -> timedelta:
    return timedelta(seconds=settings.BATCH_LEASE_SECONDS)


# ---------------------------------------------------------------------------------------------
# The lease


def claim(batch_pk: int, worker: str) -> bool:
    """Take the batch if it is active and nobody holds a fresh lease on it."""
    now = timezone.now()
    free = Q(worker_id="") | Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - _lease())
    taken = (
        Batch.objects.filter(pk=batch_pk, status__in=ACTIVE_STATUSES)
        .filter(free)
        .update(worker_id=worker, heartbeat_at=now)
    )
    return taken == 1


def release(batch_pk: int, worker: str) -> None:
    Batch.objects.filter(pk=batch_pk, worker_id=worker).update(worker_id="")


def _fence(batch_pk: int, worker: str) -> bool:
    """Inside a transaction: prove the lease is still ours (and refresh it)."""
    return bool(
        Batch.objects.filter(pk=batch_pk, worker_id=worker).update(heartbeat_at=timezone.now())
    )


# ---------------------------------------------------------------------------------------------
# Entry points (called by batches.tasks)


def run_batch(batch_pk: int) -> str:
    """Advance one batch as far as possible; returns what happened (for logs and tests)."""
    worker = worker_name()
    if not claim(batch_pk, worker):
        return "busy"
    try:
        for _ in range(20):  # each pass moves the batch one step; never loop forever
            batch = Batch.objects.select_related("org", "input_file").filter(pk=batch_pk).first()
            if batch is None:
                return "gone"  # deleted with its org meanwhile
            if batch.status in TERMINAL_STATUSES:  # also after failing validation just now
                return batch.status
            if batch.worker_id != worker:
                return "lost"
            if not batch.items_ready:
                if not ingest(batch, worker):
                    return "lost"
                continue
            reason = _stop_reason(batch)
            if reason is not None and not settle_pending(batch, worker, reason):
                return "lost"
            if batch.status == BatchStatus.FINALIZING or not _has_pending(batch):
                outcome = finalize(batch, worker)
                if outcome == "retry":
                    continue
                return outcome
            outcome = execute(batch, worker)
            logger.info("batch %s: pass ended (%s)", batch.public_id, outcome)
            if outcome in ("lost", "error"):
                return outcome
            if outcome == "yield":
                _hand_back(batch_pk, worker)
                return "yield"
            if outcome in ("cancel", "expire", "revoked") and not settle_pending(
                batch, worker, outcome
            ):
                return "lost"
        return "stuck"
    finally:
        release(batch_pk, worker)


def _hand_back(batch_pk: int, worker: str) -> None:
    from batches.services import publish_run

    Batch.objects.filter(pk=batch_pk, worker_id=worker).update(
        worker_id="", enqueued_at=timezone.now()
    )
    publish_run(batch_pk)


def reconcile() -> int:
    """Enqueue every active batch that no live worker holds: a worker died (its heartbeat is
    stale), the broker lost the message, or it was down when the batch was created."""
    from batches.services import publish_run

    now = timezone.now()
    stale = now - _lease()
    orphans = list(
        Batch.objects.filter(status__in=ACTIVE_STATUSES)
        .filter(Q(worker_id="") | Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale))
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stale))
        .order_by("created_at")
        .values_list("pk", flat=True)[:500]
    )
    sent = 0
    for pk in orphans:
        if publish_run(pk):
            Batch.objects.filter(pk=pk).update(enqueued_at=now)
            sent += 1
    if sent:
        logger.info("reconciler re-enqueued %d batch(es)", sent)
    return sent


# ---------------------------------------------------------------------------------------------
# Validation: the file becomes BatchItems


@dataclass
class _Problem:
    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line, "param": self.param}


def _input_lines(batch: Batch) -> Iterator[Any]:
    handle = storage.open_blob(batch.input_file.storage_name)
    with handle:
        yield from iter_lines(handle, max_line_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def _check_line(value: dict[str, Any], number: int, endpoint: str) -> _Problem | None:
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _Problem("missing_custom_id", "custom_id must be a non-empty string", number)
    if len(custom_id) > MAX_CUSTOM_ID:
        return _Problem(
            "invalid_custom_id", f"custom_id is longer than {MAX_CUSTOM_ID} characters", number
        )
    if value.get("method") != "POST":
        return _Problem("invalid_method", "method must be POST", number, "method")
    if value.get("url") != endpoint:
        return _Problem(
            "invalid_url",
            f"url must be {endpoint} (the batch's endpoint), got {str(value.get('url'))[:80]!r}",
            number,
            "url",
        )
    body = value.get("body")
    if not isinstance(body, dict):
        return _Problem("invalid_body", "body must be a JSON object", number, "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _Problem("invalid_body", "body.model must be a non-empty string", number, "body")
    if body.get("stream") is True:
        return _Problem(
            "stream_not_supported", "body.stream must not be true in a batch", number, "body"
        )
    return None


def validate_input(batch: Batch) -> list[_Problem]:
    """Every defect of the input file, up to MAX_REPORTED_ERRORS (one streamed pass; memory
    grows by a 16-byte digest per custom_id only)."""
    problems: list[_Problem] = []
    seen: set[bytes] = set()
    count = 0
    max_lines = settings.BATCH_MAX_LINES
    try:
        for line in _input_lines(batch):
            count += 1
            if count > max_lines:
                problems.append(
                    _Problem(
                        "too_many_requests",
                        f"a batch holds at most {max_lines} requests",
                        line.number,
                    )
                )
                break
            problem = _check_line(line.value, line.number, batch.endpoint)
            if problem is None:
                digest = hashlib.blake2b(line.value["custom_id"].encode(), digest_size=16).digest()
                if digest in seen:
                    problem = _Problem(
                        "duplicate_custom_id",
                        f"custom_id {line.value['custom_id'][:80]!r} is not unique in the file",
                        line.number,
                        "custom_id",
                    )
                seen.add(digest)
            if problem is not None:
                problems.append(problem)
                if len(problems) >= MAX_REPORTED_ERRORS:
                    break
    except LineError as exc:
        problems.append(_Problem("invalid_json_line", exc.message, exc.line))
    except FileNotFoundError:
        problems.append(_Problem("missing_file", "the input file's content is gone"))
    if count == 0 and not problems:
        problems.append(_Problem("empty_file", "the input file has no requests"))
    return problems


def ingest(batch: Batch, worker: str) -> bool:
    """Validate the file; fail the batch, or create its items (idempotently) and start it."""
    problems = validate_input(batch)
    now = timezone.now()
    if problems:
        errors = {"object": "list", "data": [p.as_dict() for p in problems]}
        with transaction.atomic():
            if not _fence(batch.pk, worker):
                return False
            active = Batch.objects.filter(pk=batch.pk)
            active.filter(status=BatchStatus.VALIDATING).update(
                status=BatchStatus.FAILED, failed_at=now, errors=errors, worker_id=""
            )
            # A cancel that came first wins; the errors are still shown.
            active.filter(status=BatchStatus.CANCELLING).update(
                status=BatchStatus.CANCELLED, cancelled_at=now, errors=errors, worker_id=""
            )
        return True
    total = 0
    chunk: list[BatchItem] = []
    for line in _input_lines(batch):
        value = line.value
        chunk.append(
            BatchItem(
                batch_id=batch.pk,
                line=line.number,
                custom_id=value["custom_id"],
                body=value["body"],
            )
        )
        total += 1
        if len(chunk) >= INSERT_CHUNK:
            if not _insert(batch.pk, worker, chunk):
                return False
            chunk = []
    if chunk and not _insert(batch.pk, worker, chunk):
        return False
    with transaction.atomic():
        if not _fence(batch.pk, worker):
            return False
        Batch.objects.filter(pk=batch.pk).update(items_ready=True, total=total)
        Batch.objects.filter(pk=batch.pk, status=BatchStatus.VALIDATING).update(
            status=BatchStatus.IN_PROGRESS, in_progress_at=now
        )
    return True


def _insert(batch_pk: int, worker: str, items: list[BatchItem]) -> bool:
    with transaction.atomic():
        if not _fence(batch_pk, worker):
            return False
        # A crash mid-way leaves earlier chunks in place: the unique constraints skip them.
        BatchItem.objects.bulk_create(items, ignore_conflicts=True)
    return True


# ---------------------------------------------------------------------------------------------
# Cancel, expiry, revoked keys


_SETTLE = {
    "cancel": (ItemStatus.CANCELLED, "batch_cancelled", "the batch was cancelled"),
    "expire": (ItemStatus.EXPIRED, "batch_expired", "the batch expired before this line ran"),
    "revoked": (
        ItemStatus.FAILED,
        "key_revoked",
        "the API key (or dashboard user) that created the batch was revoked or removed",
    ),
}


def _stop_reason(batch: Batch) -> str | None:
    if batch.status == BatchStatus.CANCELLING:
        return "cancel"
    if batch.status == BatchStatus.FINALIZING:
        return None
    if timezone.now() >= batch.expires_at:
        return "expire"
    if _caller(batch) is None:
        return "revoked"
    return None


def settle_pending(batch: Batch, worker: str, reason: str) -> bool:
    """Every line not yet run ends as cancelled / expired / failed, in one transaction."""
    status, code, message = _SETTLE[reason]
    now = timezone.now()
    with transaction.atomic():
        if not _fence(batch.pk, worker):
            return False
        settled = BatchItem.objects.filter(batch_id=batch.pk, status=ItemStatus.PENDING).update(
            status=status,
            error={"code": code, "message": message},
            finished_at=now,
            lease_until=None,
        )
        if settled:
            Batch.objects.filter(pk=batch.pk).update(failed=F("failed") + settled)
    return True


def _has_pending(batch: Batch) -> bool:
    return BatchItem.objects.filter(batch_id=batch.pk, status=ItemStatus.PENDING).exists()


# ---------------------------------------------------------------------------------------------
# Finalizing: output and error files


def _derived_id(prefix: str, *parts: str, size: int) -> str:
    digest = hashlib.blake2b(":".join(parts).encode(), digest_size=size).hexdigest()
    return prefix + digest


def _line_id(batch: Batch, line: int) -> str:
    return _derived_id("batch_req_", batch.public_id, str(line), size=16)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _output_lines(batch: Batch, kind: str) -> Iterator[bytes]:
    statuses = (ItemStatus.SUCCEEDED,) if kind == "output" else FAILED_STATUSES
    rows = (
        BatchItem.objects.filter(batch_id=batch.pk, status__in=statuses)
        .order_by("line")
        .values_list("line", "custom_id", "request_id", "status_code", "result", "error")
    )
    for line, custom_id, request_id, status_code, result, error in rows.iterator(chunk_size=500):
        if kind == "output":
            response: dict[str, Any] | None = {
                "status_code": status_code or 200,
                "request_id": request_id,
                "body": result,
            }
            error = None
        elif status_code:
            response = {"status_code": status_code, "request_id": request_id, "body": result}
        else:
            response = None
        yield _dumps(
            {
                "id": _line_id(batch, line),
                "custom_id": custom_id,
                "response": response,
                "error": error,
            }
        )


def _failpoint(name: str) -> None:
    """A crash point for fault tests: with BATCH_FAILPOINT=<name> in the worker's environment the
    worker process SIGKILLs itself here (as an OOM kill would); a no-op otherwise."""
    if os.environ.get("BATCH_FAILPOINT") == name:
        logger.warning("failpoint %s: killing the worker process", name)
        os.kill(os.getpid(), signal.SIGKILL)


def write_result_file(batch: Batch, kind: str) -> File:
    """The batch's output or error file, written once: an existing row is reused (its blob was
    complete before the row was created)."""
    file_id = _derived_id("file-", batch.public_id, kind, size=12)
    existing = File.objects.filter(public_id=file_id).first()
    if existing is not None:
        return existing
    name = storage.blob_name(batch.org.slug, file_id)
    size = count = 0
    with tempfile.TemporaryFile() as spool:
        for data in _output_lines(batch, kind):
            spool.write(data)
            size += len(data)
            count += 1
        spool.seek(0)
        storage.save_blob(name, spool)
    _failpoint("during_finalize")
    try:
        with transaction.atomic():
            return File.objects.create(
                public_id=file_id,
                org_id=batch.org_id,
                end_user=batch.end_user,
                filename=f"{batch.public_id}_{kind}.jsonl",
                purpose=Purpose.BATCH_OUTPUT,
                bytes=size,
                storage_name=name,
                content_type=JSONL,
                line_count=count,
            )
    except IntegrityError:
        return File.objects.get(public_id=file_id)
    except BaseException:
        storage.delete_blob(name)
        raise


def finalize(batch: Batch, worker: str) -> str:
    """All lines are settled: write the files and end the batch in one terminal state."""
    now = timezone.now()
    if batch.status == BatchStatus.CANCELLING:
        current, target = BatchStatus.CANCELLING, BatchStatus.CANCELLED
    elif batch.status == BatchStatus.IN_PROGRESS and (
        BatchItem.objects.filter(batch_id=batch.pk, status=ItemStatus.EXPIRED).exists()
    ):
        current, target = BatchStatus.IN_PROGRESS, BatchStatus.EXPIRED
    else:
        current, target = BatchStatus.FINALIZING, BatchStatus.COMPLETED
        if batch.status != BatchStatus.FINALIZING:
            moved = Batch.objects.filter(
                pk=batch.pk, worker_id=worker, status=BatchStatus.IN_PROGRESS
            ).update(status=BatchStatus.FINALIZING, finalizing_at=now)
            if not moved:
                return "retry"  # cancelled meanwhile, or the lease is gone: look again
    counts = dict(
        BatchItem.objects.filter(batch_id=batch.pk)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    succeeded = counts.get(ItemStatus.SUCCEEDED, 0)
    failed = sum(counts.get(status, 0) for status in FAILED_STATUSES)
    output = write_result_file(batch, "output") if succeeded else None
    errors = write_result_file(batch, "error") if failed else None
    stamp = {
        BatchStatus.COMPLETED: "completed_at",
        BatchStatus.CANCELLED: "cancelled_at",
        BatchStatus.EXPIRED: "expired_at",
    }[target]
    with transaction.atomic():
        done = Batch.objects.filter(pk=batch.pk, worker_id=worker, status=current).update(
            status=target,
            output_file=output,
            error_file=errors,
            completed=succeeded,
            failed=failed,
            worker_id="",
            **{stamp: timezone.now()},
        )
    return target if done else "retry"


# ---------------------------------------------------------------------------------------------
# Running the items


_loops = threading.local()


def _like_a_request(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


class _RequestLikeExecutor(ThreadPoolExecutor):
    """The loop's default executor, where the gateway's off-loop calls run (route lookups, usage
    writes, the config generation): each call ends like a request does, closing its database
    connection when it is obsolete (CONN_MAX_AGE) or broken, so that none lingers in a thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        return super().submit(_like_a_request, fn, *args, **kwargs)


def _event_loop() -> asyncio.AbstractEventLoop:
    """One long-lived event loop per worker thread. The gateway keeps per-loop clients (HTTP
    pools, Redis); a fresh loop per task would leak them and could reuse a dead loop's id."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed() or getattr(_loops, "pid", None) != os.getpid():
        try:
            import uvloop  # the server's loop too (uvicorn): cheaper socket I/O
        except ImportError:
            loop = asyncio.new_event_loop()
        else:
            loop = uvloop.new_event_loop()
        loop.set_default_executor(
            _RequestLikeExecutor(max_workers=4, thread_name_prefix="batch-io")
        )
        _loops.loop, _loops.pid = loop, os.getpid()
    return loop


def _caller(batch: Batch) -> Caller | None:
    """Who the lines run as: the creating API key while it is not revoked, or the creating
    dashboard user while they are active and still a member of the org (superusers always)."""
    if batch.api_key_id is not None:
        key = (
            ApiKey.objects.select_related("org")
            .filter(pk=batch.api_key_id, revoked_at__isnull=True)
            .first()
        )
        if key is None:
            return None
        return Caller.for_key(key, batch.end_user or None)
    if batch.created_by_id is None:
        return None
    from django.contrib.auth import get_user_model

    from orgs.models import Membership, Org

    user = get_user_model().objects.filter(pk=batch.created_by_id, is_active=True).first()
    if user is None:
        return None
    org = Org.objects.get(pk=batch.org_id)
    role = Membership.objects.filter(user=user, org=org).values_list("role", flat=True).first()
    if role is None and not user.is_superuser:
        return None
    caller = Caller.for_user(user, org, role or "admin")
    return Caller(
        org=caller.org,
        user=user,
        role=caller.role,
        cluster_admin=caller.cluster_admin,
        on_behalf_of=batch.end_user or None,
    )


def execute(batch: Batch, worker: str) -> str:
    """Run pending items until none is left ("drained") or the run has to stop ("cancel",
    "expire", "revoked", "lost", or "yield" at the end of its time slice)."""
    from gateway import usage
    from orgs import hotcache

    caller = _caller(batch)
    if caller is None:
        return "revoked"
    hotcache.clear()  # routes resolved by an earlier run of this process may be stale
    run = _Run(batch, worker, caller)
    try:
        outcome = _event_loop().run_until_complete(run.main())
    finally:
        usage.flush()
    return outcome


@dataclass
class _Outcome:
    pk: int
    status: str
    request_id: str = ""
    status_code: int | None = None
    result: Any = None
    error: dict[str, Any] | None = None


_CODES = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_error",
    404: "model_not_found",
    413: "request_too_large",
    429: "rate_limited",
    503: "service_unavailable",
    504: "request_timeout",
}


def _failure(pk: int, request_id: str, exc: ServiceError) -> _Outcome:
    code = _CODES.get(exc.status, "upstream_error" if exc.status >= 500 else "invalid_request")
    return _Outcome(
        pk=pk,
        status=ItemStatus.FAILED,
        request_id=request_id,
        status_code=exc.status,
        result=exc.body(),
        error={"code": code, "message": exc.message},
    )


def _retry_after(exc: ServiceError) -> float:
    try:
        return min(RETRY_AFTER_MAX, max(0.0, float(exc.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def _backoff(tries: int) -> float:
    """The wait after the `tries`-th failed try of a line: BATCH_RETRY_BASE_SECONDS, doubled on
    each further try, plus up to 25% jitter (so the waits never shrink), at most BACKOFF_MAX."""
    delay = settings.BATCH_RETRY_BASE_SECONDS * 2 ** (tries - 1)
    return min(BACKOFF_MAX, delay * random.uniform(1.0, 1.25))


class _Run:
    """One pass over a batch's pending items, on the worker's event loop."""

    def __init__(self, batch: Batch, worker: str, caller: Caller) -> None:
        self.batch_pk = batch.pk
        self.worker = worker
        self.caller = caller
        self.concurrency = max(1, settings.BATCH_CONCURRENCY)
        # Lines are read a page at a time; a line's start (its attempt) is recorded only when a
        # slot takes it up, so a worker killed mid-page charges only the lines in flight.
        self.page_size = max(64, 4 * self.concurrency)
        self.max_attempts = max(1, settings.BATCH_LINE_MAX_ATTEMPTS)
        self.tick_seconds = min(1.0, settings.BATCH_LEASE_SECONDS / 4)
        self.deadline = time.monotonic() + settings.BATCH_SLICE_SECONDS
        self.stop: str | None = None
        self.hard_stop = asyncio.Event()
        self.flush_now = asyncio.Event()
        # A line holds its slot until its result is written, so a crash re-runs at most
        # `concurrency` lines: the ones in flight and the ones not yet written.
        self.slots = asyncio.Semaphore(self.concurrency)
        self.closing = False
        self.finished: list[_Outcome] = []
        # Starts waiting to be recorded, written together by one task (see _record_start).
        self.starting: list[tuple[int, asyncio.Future[None]]] = []
        self.start_writer: asyncio.Task[None] | None = None
        self.pause_until = 0.0
        self.synced_at = 0.0
        self.write_failures = 0

    # -- helpers

    @staticmethod
    async def db(fn: Callable[..., T], *args: Any) -> T:
        return await sync_to_async(fn, thread_sensitive=True)(*args)

    def _halt(self, reason: str) -> None:
        """Stop the pass. "yield" lets the lines in flight finish; the others cancel them
        ("lost" also drops unwritten results: the lease, hence the right to write, is gone)."""
        if self.stop is None or (self.stop == "yield" and reason != "yield") or reason == "lost":
            self.stop = reason
        if reason != "yield":
            self.hard_stop.set()

    def _done(self, outcome: _Outcome) -> None:
        self.finished.append(outcome)
        self.flush_now.set()

    # -- the pass

    async def main(self) -> str:
        await self.db(close_old_connections)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=self.concurrency)
        producer = asyncio.create_task(self._produce(queue))
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self.concurrency)]
        ticker = asyncio.create_task(self._tick())
        writer = asyncio.create_task(self._write())
        all_done = asyncio.ensure_future(asyncio.gather(*workers))
        stopped = asyncio.create_task(self.hard_stop.wait())
        try:
            await asyncio.wait({all_done, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, *workers, ticker, stopped):
                task.cancel()
            await asyncio.gather(producer, all_done, ticker, stopped, return_exceptions=True)
            if self.start_writer is not None:  # a write of starts in flight ends on its own
                await asyncio.gather(self.start_writer, return_exceptions=True)
            self.closing = True
            self.flush_now.set()
            await asyncio.gather(writer, return_exceptions=True)
            await self.db(close_old_connections)
        return self.stop or "drained"

    async def _produce(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        after = 0
        while self.stop is None:
            try:
                rows, poisoned = await self.db(self._next_page, after)
            except Exception:
                logger.exception("batch %s: could not read pending lines", self.batch_pk)
                self._halt("error")
                return
            if not rows and not poisoned:
                break
            after = max(row["line"] for row in rows + poisoned)
            for row in poisoned:
                await self.slots.acquire()
                self._done(
                    _Outcome(
                        pk=row["pk"],
                        status=ItemStatus.FAILED,
                        error={
                            "code": "worker_lost",
                            "message": f"the worker running this line stopped "
                            f"{row['attempts']} times; the line is not retried again",
                        },
                    )
                )
            for row in rows:
                if self.stop is None:
                    await self.slots.acquire()
                if self.stop is None:
                    await queue.put(row)
        while not queue.empty():  # a time slice ended: what nobody started stays pending
            queue.get_nowait()
        for _ in range(self.concurrency):
            await queue.put(None)

    def _next_page(self, after: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows = list(
            BatchItem.objects.filter(
                batch_id=self.batch_pk, status=ItemStatus.PENDING, line__gt=after
            )
            .order_by("line")
            .values("pk", "line", "body", "attempts")[: self.page_size]
        )
        poisoned = [row for row in rows if row["attempts"] >= self.max_attempts]
        fresh = [row for row in rows if row["attempts"] < self.max_attempts]
        return fresh, poisoned

    async def _record_start(self, pk: int) -> bool:
        """Count an attempt for line `pk` before anything is sent for it (a line that keeps
        killing its worker is failed after BATCH_LINE_MAX_ATTEMPTS starts). Starts that arrive
        while a write is in flight share the next one: one UPDATE for many lines. False when the
        start could not be recorded: the line is not run and the pass stops."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.starting.append((pk, future))
        if self.start_writer is None or self.start_writer.done():
            self.start_writer = asyncio.create_task(self._write_starts())
        try:
            await future
        except Exception as exc:
            logger.warning("batch %s: could not record line starts: %s", self.batch_pk, exc)
            self._halt("error")
            return False
        return True

    async def _write_starts(self) -> None:
        while self.starting:
            group, self.starting = self.starting, []
            try:
                await self.db(_count_starts, [pk for pk, _ in group])
            except Exception as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in group:
                    if not future.done():
                        future.set_result(None)

    async def _work(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        while True:
            row = await queue.get()
            if row is None:
                return
            if not await self._record_start(row["pk"]):
                return
            try:
                outcome = await self._execute(row)
            except Exception as exc:  # a bug must not stop the other lines: fail this one
                logger.exception("batch line %s failed unexpectedly", row["pk"])
                outcome = _Outcome(
                    pk=row["pk"],
                    status=ItemStatus.FAILED,
                    error={"code": "internal_error", "message": type(exc).__name__},
                )
            self._done(outcome)

    async def _pause(self) -> None:
        while (wait := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    async def _sync_config(self) -> None:
        """Pick up registry changes (grants, models) at most a second late."""
        from orgs import generation, hotcache

        if time.monotonic() - self.synced_at >= 1.0:
            self.synced_at = time.monotonic()
            hotcache.sync(await generation.acurrent())

    async def _execute(self, row: dict[str, Any]) -> _Outcome:
        from gateway import chat

        request_id = "req_" + os.urandom(16).hex()
        body = row["body"]
        tries = 0
        while True:
            await self._pause()
            try:
                await self._sync_config()
                call = await chat.prepare(self.caller, dict(body), endpoint=USAGE_ENDPOINT)
            except RateLimited as exc:
                # The gateway's own limits (the model's rpm): wait, without using an attempt;
                # every line of this run waits with it.
                self.pause_until = max(self.pause_until, time.monotonic() + _retry_after(exc))
                continue
            except ServiceUnavailable as exc:  # e.g. the rate limiter's Redis is down
                tries += 1
                if tries >= self.max_attempts:
                    return _failure(row["pk"], request_id, exc)
                await asyncio.sleep(_backoff(tries))
                continue
            except ServiceError as exc:  # the line itself is wrong: no retry
                return _failure(row["pk"], request_id, exc)
            try:
                data = await chat.complete(call)
            except ServiceError as exc:
                tries += 1
                if exc.status >= 429:
                    chat.record_failure(self.caller, body, endpoint=USAGE_ENDPOINT, error=exc)
                if exc.status not in RETRYABLE_STATUSES or tries >= self.max_attempts:
                    return _failure(row["pk"], request_id, exc)
                wait = _retry_after(exc) if exc.status == 429 else _backoff(tries)
                await asyncio.sleep(wait)
                continue
            except Exception as exc:  # a bug must not sink the batch: fail the line
                logger.exception("batch line %s failed unexpectedly", row["pk"])
                tries += 1
                if tries >= self.max_attempts:
                    return _Outcome(
                        pk=row["pk"],
                        status=ItemStatus.FAILED,
                        request_id=request_id,
                        error={"code": "internal_error", "message": type(exc).__name__},
                    )
                await asyncio.sleep(_backoff(tries))
                continue
            return _Outcome(
                pk=row["pk"],
                status=ItemStatus.SUCCEEDED,
                request_id=request_id,
                status_code=200,
                result=data,
            )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            try:
                reason = await self.db(self._check)
            except Exception as exc:  # the database blinked: the lease decides later
                logger.warning("batch %s: heartbeat failed: %s", self.batch_pk, exc)
                continue
            if reason is not None:
                self._halt(reason)
            elif time.monotonic() >= self.deadline or _stop.is_set():
                self._halt("yield")

    def _check(self) -> str | None:
        """Heartbeat, and look for a cancel, the expiry or a revoked key."""
        now = timezone.now()
        if not Batch.objects.filter(pk=self.batch_pk, worker_id=self.worker).update(
            heartbeat_at=now
        ):
            return "lost"
        state = (
            Batch.objects.filter(pk=self.batch_pk)
            .values("status", "expires_at", "api_key__revoked_at", "api_key_id", "created_by_id")
            .first()
        )
        if state is None:
            return "lost"
        if state["status"] == BatchStatus.CANCELLING:
            return "cancel"
        if state["status"] != BatchStatus.IN_PROGRESS:
            return "lost"
        if now >= state["expires_at"]:
            return "expire"
        if state["api_key_id"] is not None:
            if state["api_key__revoked_at"] is not None:
                return "revoked"
        elif state["created_by_id"] is None or _caller(Batch.objects.get(pk=self.batch_pk)) is None:
            return "revoked"
        return None

    async def _write(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_now.wait(), timeout=FLUSH_SECONDS)
            self.flush_now.clear()
            await self._flush()
            if self.closing:
                await self._flush()
                return

    async def _flush(self) -> None:
        if not self.finished or self.stop == "lost":
            return
        outcomes, self.finished = self.finished, []
        try:
            owned = await self.db(self._persist, outcomes)
        except Exception as exc:
            # Keep the results and try again; after a few failures stop the pass (the lines
            # still pending run again later, and are written once).
            self.finished = outcomes + self.finished
            self.write_failures += 1
            logger.warning("batch %s: could not record results: %s", self.batch_pk, exc)
            if self.write_failures >= 5:
                self._halt("error")
            else:
                await asyncio.sleep(0.5 * self.write_failures)
            return
        self.write_failures = 0
        if not owned:
            self._halt("lost")
            return
        for _ in outcomes:
            self.slots.release()

    def _persist(self, outcomes: list[_Outcome]) -> bool:
        """Record finished lines, each once, with the counters, under the lease: one transaction
        that is rolled back if the lease turns out to be someone else's."""
        try:
            return self._persist_with(_record_all, outcomes)
        except DataError:  # a response the database cannot hold (NUL in PostgreSQL JSON)
            return self._persist_with(_record_each, outcomes)

    def _persist_with(
        self, record: Callable[[list[_Outcome], Any], tuple[int, int]], outcomes: list[_Outcome]
    ) -> bool:
        now = timezone.now()
        with transaction.atomic():
            succeeded, failed = record(outcomes, now)
            owned = Batch.objects.filter(pk=self.batch_pk, worker_id=self.worker).update(
                heartbeat_at=now,
                completed=F("completed") + succeeded,
                failed=F("failed") + failed,
            )
            if not owned:
                transaction.set_rollback(True)
        return bool(owned)


def _count_starts(pks: list[int]) -> None:
    BatchItem.objects.filter(pk__in=pks, status=ItemStatus.PENDING).update(
        attempts=F("attempts") + 1, lease_until=timezone.now() + _lease()
    )


def _record_all(outcomes: list[_Outcome], now: Any) -> tuple[int, int]:
    succeeded = _record([o for o in outcomes if o.status == ItemStatus.SUCCEEDED], now)
    failed = _record([o for o in outcomes if o.status != ItemStatus.SUCCEEDED], now)
    return succeeded, failed


def _record_each(outcomes: list[_Outcome], now: Any) -> tuple[int, int]:
    """One by one, so that a result the database refuses fails its line and only its line."""
    succeeded = failed = 0
    for outcome in outcomes:
        try:
            with transaction.atomic():
                written = _record([outcome], now)
        except DataError as exc:
            logger.warning("batch line %s: the result cannot be stored: %s", outcome.pk, exc)
            outcome = _Outcome(
                pk=outcome.pk,
                status=ItemStatus.FAILED,
                request_id=outcome.request_id,
                error={
                    "code": "unstorable_response",
                    "message": "the response could not be stored (it holds NUL characters?)",
                },
            )
            written = _record([outcome], now)
        if written and outcome.status == ItemStatus.SUCCEEDED:
            succeeded += written
        else:
            failed += written
    return succeeded, failed


_RECORDED_FIELDS = (
    "status",
    "request_id",
    "status_code",
    "result",
    "error",
    "finished_at",
    "lease_until",
)


def _record(outcomes: list[_Outcome], now: Any) -> int:
    """`UPDATE … WHERE pk = ? AND status = 'pending'` for each outcome, as one executemany (the
    hot path of a batch: the ORM's per-row update costs more than the upstream call). Returns how
    many lines were written: a line already recorded (a duplicate execution) is not."""
    if not outcomes:
        return 0
    meta = BatchItem._meta
    fields = [meta.get_field(name) for name in _RECORDED_FIELDS]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)  # type: ignore[union-attr]
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "
        f"WHERE {quote(meta.pk.column)} = %s AND {quote(meta.get_field('status').column)} = %s"  # type: ignore[union-attr]
    )
    rows = []
    for outcome in outcomes:
        values = (
            outcome.status,
            outcome.request_id,
            outcome.status_code,
            outcome.result,
            outcome.error,
            now,
            None,
        )
        prepared = [
            field.get_db_prep_save(value, connection)  # type: ignore[union-attr]
            for field, value in zip(fields, values, strict=True)
        ]
        rows.append([*prepared, outcome.pk, ItemStatus.PENDING.value])
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        return max(0, cursor.rowcount)


def open_result(file: File) -> IO[bytes]:
    """For tests and the admin: the stored bytes of a file."""
    return storage.open_blob(file.storage_name)
