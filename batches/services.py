"""Verbs on files and batches, scoped to the caller (org and end user). Each write is atomic:
a failed request leaves no row and no blob behind."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from batches import storage
from batches.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    UPLOAD_PURPOSES,
    Batch,
    BatchStatus,
    File,
    Purpose,
    new_file_id,
)
from batches.uploads import clean_filename, inspect_upload
from orgs.auth import Caller
from orgs.errors import Conflict, InvalidRequest, NotFound

logger = logging.getLogger(__name__)

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/images/generations")
# What the workers can run today; the other contract endpoints are refused with a 400.
RUNNABLE_ENDPOINTS = ("/v1/chat/completions",)
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def _shown(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


# ---------------------------------------------------------------------------------------------
# Files


def create_file(caller: Caller, upload: UploadedFile, purpose: str) -> File:
    """Store an upload (already streamed to a temporary file) as the caller's file."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}, not {_shown(purpose)}",
            param="purpose",
        )
    inspection = inspect_upload(upload, purpose)
    file_id = new_file_id()
    name = storage.blob_name(caller.org.slug, file_id)
    storage.save_blob(name, upload.file)
    try:
        with transaction.atomic():
            return File.objects.create(
                public_id=file_id,
                org=caller.org,
                end_user=caller.on_behalf_of or "",
                filename=clean_filename(upload.name or ""),
                purpose=purpose,
                bytes=upload.size or 0,
                storage_name=name,
                content_type=inspection.content_type,
                line_count=inspection.line_count,
            )
    except BaseException:
        storage.delete_blob(name)
        raise


def file_queryset(caller: Caller, purpose: str | None = None) -> QuerySet[File]:
    files = File.objects.for_caller(caller)
    return files.filter(purpose=purpose) if purpose else files


def get_file(caller: Caller, file_id: str) -> File:
    found = File.objects.for_caller(caller).filter(public_id=file_id).first()
    if found is None:
        raise NotFound(f"file {_shown(file_id)} not found", param="file_id")
    return found


def delete_file(caller: Caller, file_id: str) -> File:
    """Soft delete: the row stays (batches keep naming it), the content goes."""
    with transaction.atomic():
        found = (
            File.objects.for_caller(caller).select_for_update().filter(public_id=file_id).first()
        )
        if found is None:
            raise NotFound(f"file {_shown(file_id)} not found", param="file_id")
        busy = Batch.objects.filter(input_file=found, status__in=ACTIVE_STATUSES).first()
        if busy is not None:
            raise Conflict(
                f"file {found.public_id} is the input of batch {busy.public_id}, which is still "
                f"{busy.status}; cancel it or wait until it ends",
                param="file_id",
            )
        found.deleted_at = timezone.now()
        found.save(update_fields=["deleted_at"])
        transaction.on_commit(partial(storage.delete_blob, found.storage_name))
    return found


# ---------------------------------------------------------------------------------------------
# Batches


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object of strings, or null", param="metadata")
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"metadata holds at most {MAX_METADATA_PAIRS} pairs, got {len(value)}",
            param="metadata",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"metadata keys are at most {MAX_METADATA_KEY} characters", param="metadata"
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                f"metadata.{key[:64]} must be a string", param=f"metadata.{key[:64]}"
            )
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata.{key[:64]} is longer than {MAX_METADATA_VALUE} characters",
                param=f"metadata.{key[:64]}",
            )
    return dict(value)


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    return value


def create_batch(caller: Caller, body: dict[str, Any]) -> Batch:
    """Check the request and record the batch as `validating`; a worker takes it from there."""
    known = {"input_file_id", "endpoint", "completion_window", "metadata"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:64]!r}", param=unknown[0][:64])
    file_id = _string(body, "input_file_id", required=True)
    endpoint = _string(body, "endpoint", required=True)
    window = _string(body, "completion_window", required=False) or "24h"
    metadata = _metadata(body.get("metadata"))
    assert file_id is not None and endpoint is not None
    if endpoint not in BATCH_ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, not {_shown(endpoint)}",
            param="endpoint",
        )
    if endpoint not in RUNNABLE_ENDPOINTS:
        raise InvalidRequest(
            f"batches for {endpoint} are not supported by this server; use "
            f"{', '.join(RUNNABLE_ENDPOINTS)}",
            param="endpoint",
        )
    if window != "24h":
        raise InvalidRequest(
            f"completion_window must be '24h', not {_shown(window)}", param="completion_window"
        )
    with transaction.atomic():
        input_file = File.objects.for_caller(caller).filter(public_id=file_id).first()
        if input_file is None:
            raise NotFound(f"file {_shown(file_id)} not found", param="input_file_id")
        if input_file.purpose != Purpose.BATCH:
            raise InvalidRequest(
                f"file {input_file.public_id} has purpose {input_file.purpose!r}; a batch "
                "needs a file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        now = timezone.now()
        batch = Batch.objects.create(
            org=caller.org,
            end_user=caller.on_behalf_of or "",
            api_key=caller.key,
            created_by=caller.user if caller.key is None else None,
            input_file=input_file,
            endpoint=endpoint,
            completion_window=window,
            metadata=metadata,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.BATCH_COMPLETION_WINDOW_SECONDS),
            enqueued_at=now,
        )
        enqueue_run(batch.pk)
    return batch


_publisher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch-enqueue")


def enqueue_run(batch_pk: int) -> None:
    """Send the batch to a worker once the transaction commits, off the request thread: a broker
    that is down (the Redis client retries for seconds) neither fails nor slows the request,
    and the reconciler enqueues every batch that no worker holds."""
    transaction.on_commit(partial(_publisher.submit, publish_run, batch_pk), robust=True)


def publish_run(batch_pk: int) -> bool:
    from batches.tasks import run_batch

    try:
        run_batch.apply_async((batch_pk,), retry=False)
    except Exception as exc:  # kombu OperationalError and friends
        logger.warning("could not enqueue batch %s (the reconciler will): %s", batch_pk, exc)
        return False
    return True


def batch_queryset(caller: Caller) -> QuerySet[Batch]:
    return Batch.objects.for_caller(caller).select_related(
        "input_file", "output_file", "error_file"
    )


def get_batch(caller: Caller, batch_id: str) -> Batch:
    found = batch_queryset(caller).filter(public_id=batch_id).first()
    if found is None:
        raise NotFound(f"batch {_shown(batch_id)} not found", param="batch_id")
    return found


def cancel_batch(caller: Caller, batch_id: str) -> Batch:
    """validating / in_progress → cancelling (the worker then stops and writes what finished);
    idempotent on cancelling; 409 once the batch is finalizing or over."""
    with transaction.atomic():
        found = Batch.objects.for_caller(caller).select_for_update().filter(public_id=batch_id)
        batch = found.first()
        if batch is None:
            raise NotFound(f"batch {_shown(batch_id)} not found", param="batch_id")
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            batch.status = BatchStatus.CANCELLING
            batch.cancelling_at = timezone.now()
            batch.save(update_fields=["status", "cancelling_at"])
            if not batch.worker_id:
                enqueue_run(batch.pk)
        elif batch.status != BatchStatus.CANCELLING:
            done = "has already ended" if batch.status in TERMINAL_STATUSES else "is finalizing"
            raise Conflict(
                f"batch {batch.public_id} {done} ({batch.status}); it cannot be cancelled",
                param="batch_id",
            )
    return get_batch(caller, batch_id)


# ---------------------------------------------------------------------------------------------
# Pagination (api-contract.md §7.3, §9.3)


def page(
    queryset: QuerySet[Any],
    *,
    after: str | None,
    limit: int,
    descending: bool = True,
    cursor_name: str = "after",
) -> tuple[list[Any], bool]:
    """Rows ordered by (created_at, public_id), newest first unless `descending` is false,
    strictly after the row whose public id is `after` (400 if it is not in `queryset`)."""
    if descending:
        queryset = queryset.order_by("-created_at", "-public_id")
    else:
        queryset = queryset.order_by("created_at", "public_id")
    if after:
        # No id holds a control character, and PostgreSQL refuses NUL even in a lookup.
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in after):
            raise InvalidRequest(f"{cursor_name} {_shown(after)} is not a known id", param="after")
        anchor = queryset.filter(public_id=after).values_list("created_at", flat=True).first()
        if anchor is None:
            raise InvalidRequest(f"{cursor_name} {_shown(after)} is not a known id", param="after")
        queryset = queryset.filter(_beyond(anchor, after, descending))
    rows = list(queryset[: limit + 1])
    return rows[:limit], len(rows) > limit


def _beyond(created_at: datetime, public_id: str, descending: bool) -> Q:
    if descending:
        return Q(created_at__lt=created_at) | Q(created_at=created_at, public_id__lt=public_id)
    return Q(created_at__gt=created_at) | Q(created_at=created_at, public_id__gt=public_id)
