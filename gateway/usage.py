"""Usage records, written off the hot path: requests append to an in-process buffer that a
background task flushes in batches (every second, or sooner when it fills)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from django.db import InterfaceError, OperationalError

from gateway.models import UsageRecord

logger = logging.getLogger(__name__)
FLUSH_INTERVAL = 1.0
FLUSH_SIZE = 500
# Records kept while the database is unreachable; beyond this the oldest are dropped.
MAX_BUFFERED = 50_000

_buffer: list[UsageRecord] = []
_lock = threading.Lock()  # guards _buffer
_write_lock = threading.Lock()  # one writer at a time; flush() returns after any write in flight
_paused = False
_flushers: dict[int, asyncio.Task[None]] = {}


def _take() -> list[UsageRecord]:
    global _buffer
    with _lock:
        batch, _buffer = _buffer, []
    return batch


def flush(*, background: bool = False) -> int:
    """Write buffered records now (sync; also used by tests and at shutdown). Waits for a write
    already in flight, so that once it returns nothing buffered before the call is unwritten.
    A background flush does nothing while background writes are paused."""
    with _write_lock:
        if background and _paused:
            return 0
        batch = _take()
        if not batch:
            return 0
        try:
            UsageRecord.objects.bulk_create(batch, batch_size=500)  # one transaction
        except (OperationalError, InterfaceError) as exc:
            # The database is unreachable (or the connection was cut): nothing was written, so
            # the records wait for the next flush.
            _put_back(batch)
            logger.warning(
                "could not write %d usage records, kept for the next try: the database is "
                "unavailable (%s)",
                len(batch),
                type(exc).__name__,
            )
            return 0
        except Exception:
            logger.exception("could not write %d usage records", len(batch))
        return len(batch)


def _put_back(batch: list[UsageRecord]) -> None:
    """Return unwritten records to the front of the buffer, keeping at most MAX_BUFFERED."""
    global _buffer
    with _lock:
        _buffer = batch + _buffer
        overflow = len(_buffer) - MAX_BUFFERED
        if overflow > 0:
            del _buffer[:overflow]
    if overflow > 0:
        logger.warning("usage buffer full: dropped the %d oldest records", overflow)


def pause_background_writes() -> None:
    """Stop the background flusher from touching the database (it keeps buffering) until
    `resume_background_writes`; returns once a write in flight has finished. Used before the
    database is emptied or closed under a running server."""
    global _paused
    with _write_lock:
        _paused = True


def resume_background_writes(*, discard: bool = False) -> None:
    """Let the background flusher write again; `discard` drops what was buffered meanwhile."""
    global _paused
    with _write_lock:
        _paused = False
        if discard:
            _take()


async def _flusher() -> None:
    from orgs.asyncdb import run_db

    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        if _buffer and not _paused:
            await run_db(flush, background=True)


def _ensure_flusher() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = _flushers.get(id(loop))
    if task is None or task.done():
        _flushers[id(loop)] = loop.create_task(_flusher())


def record(**fields: Any) -> None:
    """Queue one usage record (never blocks on the database)."""
    with _lock:
        _buffer.append(UsageRecord(**fields))
    _ensure_flusher()


def pending() -> int:
    return len(_buffer)
