"""JSON API handlers of files and batches (api-contract.md §3 rows 15–23, §7, §9).

Handlers parse, call a service and shape the response; `orgs.jsonapi.endpoint` does auth, method
routing and errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.http import content_disposition_header

from batches import services, storage
from batches.models import Batch, File, Purpose
from batches.uploads import LimitedUploadHandler
from orgs.auth import Caller
from orgs.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from orgs.jsonapi import read_json_object

FILES_MAX_LIMIT = 10_000
BATCHES_MAX_LIMIT = 100


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": _ts(file.expires_at),
    }


def _file_id(file: File | None) -> str | None:
    return None if file is None else file.public_id


def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "input_file_id": batch.input_file.public_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "output_file_id": _file_id(batch.output_file),
        "error_file_id": _file_id(batch.error_file),
        "errors": batch.errors,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "metadata": batch.metadata,
    }


def _list(rows: list[Any], has_more: bool, shape: Any) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [shape(row) for row in rows],
        "first_id": rows[0].public_id if rows else None,
        "last_id": rows[-1].public_id if rows else None,
        "has_more": has_more,
    }


def _param(request: HttpRequest, name: str) -> str | None:
    """A query parameter given at most once (None when absent)."""
    values = request.GET.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given only once", param=name)
    return values[0] if values else None


def _limit(request: HttpRequest, default: int, maximum: int) -> int:
    raw = _param(request, "limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer, got {raw[:32]!r}", param="limit") from None
    if value < 1:
        raise InvalidRequest("limit must be at least 1", param="limit")
    return min(value, maximum)


# --- §7 files ----------------------------------------------------------------------------------


def upload_file(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type must be multipart/form-data, got {content_type[:64] or 'none'}"
        )
    handler = LimitedUploadHandler(request)
    request.upload_handlers = [handler]
    try:
        try:
            purpose = request.POST.get("purpose")
            upload = request.FILES.get("file")
        except MultiPartParserError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from None
        except RequestDataTooBig:
            raise PayloadTooLarge("the form fields are larger than the maximum") from None
        except SuspiciousOperation as exc:  # too many fields or files
            raise InvalidRequest(f"malformed multipart body: {exc}") from None
        if not purpose:
            raise InvalidRequest("the form field 'purpose' is required", param="purpose")
        if upload is None:
            raise InvalidRequest("the file part 'file' is required", param="file")
        file = services.create_file(caller, upload, purpose)
    finally:
        handler.discard()
    return file_object(file)


def list_files(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    order = _param(request, "order")
    if order is None:
        order = "desc"  # an empty value is not asc or desc either: refused below
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be asc or desc, not {order[:32]!r}", param="order")
    purpose = _param(request, "purpose")
    if purpose is not None and purpose not in Purpose.values:
        raise InvalidRequest(f"unknown purpose {purpose[:32]!r}", param="purpose")
    rows, has_more = services.page(
        services.file_queryset(caller, purpose),
        after=_param(request, "after") or None,
        limit=_limit(request, FILES_MAX_LIMIT, FILES_MAX_LIMIT),
        descending=order == "desc",
    )
    return _list(rows, has_more, file_object)


def get_file(request: HttpRequest, caller: Caller, file_id: str) -> dict[str, Any]:
    return file_object(services.get_file(caller, file_id))


def delete_file(request: HttpRequest, caller: Caller, file_id: str) -> dict[str, Any]:
    file = services.delete_file(caller, file_id)
    return {"id": file.public_id, "object": "file", "deleted": True}


def file_content(request: HttpRequest, caller: Caller, file_id: str) -> HttpResponse:
    """The stored bytes, streamed, with the stored (sniffed) content type (§7.5)."""
    file = services.get_file(caller, file_id)
    try:
        handle = storage.open_blob(file.storage_name)
    except FileNotFoundError:
        raise NotFound(f"the content of file {file.public_id} is gone", param="file_id") from None
    response = StreamingHttpResponse(storage.iter_blob(handle), content_type=file.content_type)
    response["Content-Length"] = str(file.bytes)
    response["Content-Disposition"] = content_disposition_header(True, file.filename) or ""
    # Uploaded HTML or SVG must never run as a page of this origin.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# --- §9 batches --------------------------------------------------------------------------------


def create_batch(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    body = read_json_object(request)
    batch = services.create_batch(caller, body)
    return batch_object(services.get_batch(caller, batch.public_id))


def list_batches(request: HttpRequest, caller: Caller) -> dict[str, Any]:
    rows, has_more = services.page(
        services.batch_queryset(caller),
        after=_param(request, "after") or None,
        limit=_limit(request, 20, BATCHES_MAX_LIMIT),
    )
    return _list(rows, has_more, batch_object)


def get_batch(request: HttpRequest, caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(services.get_batch(caller, batch_id))


def cancel_batch(request: HttpRequest, caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(services.cancel_batch(caller, batch_id))
