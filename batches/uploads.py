"""Multipart uploads streamed to a temporary file with a size cap, and what an upload is: its
content type (sniffed, never taken from the client) and, for batch files, its JSONL lines."""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from batches.asgi import MULTIPART_SLACK
from batches.jsonl import LineError, iter_lines
from batches.models import Purpose
from orgs.errors import InvalidRequest, PayloadTooLarge

SNIFF_BYTES = 8192
JSONL = "application/jsonl"

_TEXT_BY_EXTENSION = {
    ".jsonl": JSONL,
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".xml": "text/xml",
    ".py": "text/x-python",
    ".svg": "image/svg+xml",
}
_OOXML = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_OLE = {
    ".doc": "application/msword",
    ".xls": "application/vnd.ms-excel",
    ".ppt": "application/vnd.ms-powerpoint",
}


def too_large() -> PayloadTooLarge:
    limit = settings.FILES_MAX_UPLOAD_BYTES
    return PayloadTooLarge(f"the file is larger than the maximum of {limit} bytes", param="file")


class LimitedUploadHandler(FileUploadHandler):
    """Streams the one file part (named `file`) to a temporary file on disk and stops with a
    413 as soon as it passes FILES_MAX_UPLOAD_BYTES. (DATA_UPLOAD_MAX_MEMORY_SIZE only covers
    the non-file fields.)"""

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.limit: int = settings.FILES_MAX_UPLOAD_BYTES
        self.received = 0
        self.upload: TemporaryUploadedFile | None = None

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > self.limit + MULTIPART_SLACK:
            raise too_large()

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if field_name != "file":
            raise InvalidRequest(
                f"unexpected file part {field_name[:64]!r}; send the file in the part 'file'",
                param=field_name[:64],
            )
        if self.upload is not None:
            raise InvalidRequest("send exactly one file in the part 'file'", param="file")
        self.upload = TemporaryUploadedFile(
            self.file_name, self.content_type, 0, self.charset, self.content_type_extra
        )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received > self.limit:
            raise too_large()
        assert self.upload is not None
        self.upload.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self.upload is None:
            return None
        self.upload.seek(0)
        self.upload.size = file_size
        return self.upload

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.close()  # deletes the temporary file


def clean_filename(name: str) -> str:
    """The base name only (Django's parser already drops directories and control characters),
    at most 255 characters with the extension kept."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip() or "file"
    if len(name) > 255:
        stem, ext = os.path.splitext(name)
        ext = ext[:16]
        name = stem[: 255 - len(ext)] + ext
    return name


@dataclass(frozen=True)
class Inspection:
    content_type: str
    line_count: int | None


def _is_utf8(handle: IO[bytes]) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := handle.read(1024 * 1024):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _sniff(handle: IO[bytes], filename: str) -> str:
    head = handle.read(SNIFF_BYTES)
    ext = os.path.splitext(filename)[1].lower()
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"PK\x03\x04") and ext in _OOXML:
        return _OOXML[ext]
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") and ext in _OLE:
        return _OLE[ext]
    if head.startswith(b"{\\rtf"):
        return "application/rtf"
    handle.seek(0)
    if b"\x00" not in head and _is_utf8(handle):
        return _TEXT_BY_EXTENSION.get(ext, "text/plain")
    raise InvalidRequest(
        "unsupported file type: upload text (JSONL, JSON, CSV, Markdown...), PDF, an office "
        "document or an image (PNG, JPEG, GIF, WebP, TIFF)",
        param="file",
    )


def _batch_lines(handle: IO[bytes]) -> int:
    max_lines = settings.BATCH_MAX_LINES
    count = 0
    try:
        for line in iter_lines(handle, max_line_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE):
            count += 1
            if count > max_lines:
                raise LineError(line.number, f"a batch file holds at most {max_lines} requests")
    except LineError as exc:
        raise InvalidRequest(str(exc), param="file") from None
    if count == 0:
        raise InvalidRequest("the file has no JSON lines", param="file")
    return count


def inspect_upload(upload: UploadedFile, purpose: str) -> Inspection:
    """Check an upload before anything is stored: 400 naming the first bad line of a batch file,
    400 for an empty file or an unsupported type."""
    if not upload.size:
        raise InvalidRequest("the file is empty", param="file")
    handle = upload.file
    handle.seek(0)
    try:
        if purpose == Purpose.BATCH:
            return Inspection(JSONL, _batch_lines(handle))
        return Inspection(_sniff(handle, upload.name or ""), None)
    finally:
        handle.seek(0)
