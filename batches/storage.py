"""File contents through Django's storage API (`default_storage`: a local directory under
MEDIA_ROOT unless STORAGES says otherwise). A blob's name is derived from ids only
(`files/<org-slug>/<file-id>`); user-supplied file names never reach a path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import IO

from asgiref.sync import sync_to_async
from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage

from orgs.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024


class StorageFailed(ServiceUnavailable):
    """The file storage could not be written or read (503; nothing was recorded)."""


def blob_name(org_slug: str, file_id: str) -> str:
    return f"files/{org_slug}/{file_id}"


def save_blob(name: str, content: IO[bytes]) -> None:
    """Store `content` under exactly `name`, replacing a leftover of an interrupted attempt."""
    try:
        if default_storage.exists(name):
            default_storage.delete(name)
        saved = default_storage.save(name, DjangoFile(content, name=name))
    except Exception as exc:  # OSError locally; any backend error for remote storages
        logger.error("could not store %s: %s", name, exc)
        raise StorageFailed("file storage is unavailable; the file was not stored") from exc
    if saved != name:  # a concurrent writer took the name: never leave a stray copy
        delete_blob(saved)
        raise StorageFailed("file storage is unavailable; the file was not stored")


def delete_blob(name: str) -> None:
    """Best effort: a blob that cannot be deleted is logged, not fatal."""
    try:
        default_storage.delete(name)
    except Exception as exc:
        logger.warning("could not delete stored file %s: %s", name, exc)


def open_blob(name: str) -> IO[bytes]:
    try:
        return default_storage.open(name, "rb")
    except FileNotFoundError:
        raise
    except Exception as exc:
        logger.error("could not read %s: %s", name, exc)
        raise StorageFailed("file storage is unavailable; try again shortly") from exc


async def iter_blob(handle: IO[bytes]) -> AsyncIterator[bytes]:
    """The content of an open blob in chunks, read off the event loop (an async iterator, so
    that the ASGI handler streams it instead of reading it whole into memory)."""
    read = sync_to_async(handle.read, thread_sensitive=False)
    try:
        while True:
            chunk = await read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()
