"""The secrets canary (goal G4), active over the whole suite.

Provider keys in the tests start with `sk-canary-` (or `sk-browser-canary-`). While the suite
runs, this plugin looks for them wherever the product could leak them:

- every HTTP body the live server sends (an ASGI wrapper around the served application) and
  every response of Django's in-process test clients;
- every log record of the product's loggers, with its traceback, and the log files of the
  Celery workers and web processes the tests start;
- the database at the end of each test that used it (before it is emptied or rolled back): a
  dump of every table (the ciphertext of the encrypted auth column cannot contain the plaintext,
  so nothing is excepted).

No full API key (`mk_…`) may be logged or stored either (only its hash and prefix); HTTP bodies
may carry one, since the response that issues a key shows it once.

A hit fails the test during which it happened and names where it was found.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CANARY = re.compile(rb"sk-(?:browser-)?canary-[0-9A-Za-z-]+")
FULL_API_KEY = re.compile(rb"(?<![A-Za-z0-9_-])mk_[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])")
# The stand-in upstream's logs are the provider's side, not ours.
IGNORED_LOGGERS = ("tests.upstream_server",)


@dataclass
class Tally:
    bodies: int = 0
    log_records: int = 0
    log_files: int = 0
    db_scans: int = 0
    hits: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def hit(self, where: str, data: bytes, *, api_keys: bool = False) -> None:
        """Note a provider-key canary in `data` (and, with `api_keys`, a full API key: shown
        once in the response that issues it, it must never be logged or stored)."""
        match = CANARY.search(data) or (api_keys and FULL_API_KEY.search(data))
        if match:
            start = max(0, match.start() - 60)
            context = data[start : match.end() + 20].decode("utf-8", "replace")
            self.pending.append(f"{where}: …{context}…")


TALLY = Tally()


# --- HTTP bodies -------------------------------------------------------------------------------


def scan_asgi(app: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an ASGI application so that every response body it sends is scanned."""

    async def scanned(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope.get("path", "")
        tail = b""

        async def scanning_send(message: dict[str, Any]) -> None:
            nonlocal tail
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body:
                    # Keep the end of the previous chunk: a secret split across chunks counts.
                    TALLY.hit(f"HTTP body of {path}", tail + body)
                    tail = body[-80:]
                if not message.get("more_body"):
                    TALLY.bodies += 1
            elif message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    TALLY.hit(f"HTTP header {name!r} of {path}", value)
            await send(message)

        await app(scope, receive, scanning_send)

    return scanned


def _scan_client_response(response: Any, path: str) -> None:
    if getattr(response, "streaming", False):
        return  # streamed pages are scanned by the live-server wrapper
    TALLY.bodies += 1
    TALLY.hit(f"test-client body of {path}", bytes(response.content))
    for name, value in response.items():
        TALLY.hit(f"test-client header {name} of {path}", str(value).encode())


def _install_client_scan() -> None:
    from django.test import client

    sync_request = client.Client.request
    async_request = client.AsyncClient.request

    def request(self: Any, **kwargs: Any) -> Any:
        response = sync_request(self, **kwargs)
        _scan_client_response(response, kwargs.get("PATH_INFO", ""))
        return response

    async def arequest(self: Any, **kwargs: Any) -> Any:
        response = await async_request(self, **kwargs)
        _scan_client_response(response, kwargs.get("PATH_INFO", ""))
        return response

    client.Client.request = request  # type: ignore[method-assign]
    client.AsyncClient.request = arequest  # type: ignore[method-assign]


# --- logs --------------------------------------------------------------------------------------


class _LogScan(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(IGNORED_LOGGERS):
            return
        TALLY.log_records += 1
        try:
            text = record.getMessage()
        except Exception:  # a bad format string is not a leak
            text = str(record.msg)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        TALLY.hit(
            f"log record {record.name} {record.levelname}",
            text.encode("utf-8", "replace"),
            api_keys=True,
        )


def scan_log_file(path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError:
        return
    TALLY.log_files += 1
    TALLY.hit(f"log file {path.name}", data, api_keys=True)


# --- database ----------------------------------------------------------------------------------


def _dump_database() -> bytes:
    from django.apps import apps
    from django.db import connection

    tables = [
        m._meta.db_table
        for m in apps.get_models(include_auto_created=True)
        if not m._meta.proxy and m._meta.managed
    ]
    existing = set(connection.introspection.table_names())
    tables = [t for t in dict.fromkeys(tables) if t in existing]
    if not tables:
        return b""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            union = " UNION ALL ".join(
                f"SELECT row_to_json(t)::text FROM {qn(t)} t" for t in tables
            )
            cursor.execute(union)
            return "\n".join(row[0] for row in cursor.fetchall()).encode()
        chunks: list[str] = []
        for table in tables:
            cursor.execute(f"SELECT * FROM {qn(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
        return "\n".join(chunks).encode()


# --- pytest hooks ------------------------------------------------------------------------------


_LOG_SCAN = _LogScan(level=logging.DEBUG)


def pytest_configure(config: pytest.Config) -> None:
    _install_client_scan()


@pytest.fixture(autouse=True)
def _secrets_canary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test during which a secret leaked (after scanning its database, if any)."""
    uses_db = "_django_db_helper" in request.fixturenames
    if uses_db:
        # Set the database up first so that it is scanned before it is emptied.
        request.getfixturevalue("_django_db_helper")
    root = logging.getLogger()
    if _LOG_SCAN not in root.handlers:  # Django's logging set-up replaces the root handlers
        root.addHandler(_LOG_SCAN)
    TALLY.pending.clear()
    yield
    if uses_db:
        try:
            dump = _dump_database()
        except Exception as exc:  # a broken connection is the test's own business
            dump = b""
            logging.getLogger(__name__).debug("database not scanned: %s", exc)
        else:
            TALLY.db_scans += 1
        TALLY.hit("database dump", dump, api_keys=True)
    found, TALLY.pending = list(TALLY.pending), []
    TALLY.hits.extend(found)
    if found:
        pytest.fail("secret leaked:\n" + "\n".join(found[:10]), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base = getattr(session.config, "_tmp_path_factory", None)
    if base is not None:
        try:
            root = base.getbasetemp()
        except Exception:
            root = None
        if root is not None:
            for path in root.rglob("*.log"):
                scan_log_file(path)
    TALLY.hits.extend(TALLY.pending)
    if TALLY.pending:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nsecret leaked in worker or server logs:\n" + "\n".join(TALLY.pending[:10]))
    try:
        from tests.hardening.figures import record

        option = session.config.option
        paths = [str(p).rstrip("/") for p in option.file_or_dir or []]
        whole = (
            paths in ([], ["tests"])
            and not option.keyword
            and (option.markexpr or "") in ("", "not slow")
        )
        # A partial run (a file, -k, -m slow) keeps its figures apart: G4 is the whole suite's.
        record(
            "G4" if whole else "G4-partial-run",
            tests=session.testscollected,
            whole_suite=whole,
            http_bodies_scanned=TALLY.bodies,
            log_records_scanned=TALLY.log_records,
            log_files_scanned=TALLY.log_files,
            database_dumps_scanned=TALLY.db_scans,
            hits=len(TALLY.hits),
        )
    except Exception:  # Django not configured (collection errors): nothing to record
        pass
