"""Database work from async code: run a sync function in a worker thread, and close that
thread's stale (or, with CONN_MAX_AGE=0, every) database connection before and after, as a
Django request would. Without this, connections opened by worker threads stay open forever."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")


def _run(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


_run_async = sync_to_async(_run, thread_sensitive=False)


async def run_db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await _run_async(fn, args, kwargs)
