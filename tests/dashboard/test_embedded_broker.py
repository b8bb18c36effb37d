"""The embedded broker of `make run` (dashboard/broker.py): a consumer never sees half a message."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from kombu import Connection

from dashboard import broker

MESSAGES = 40
PAYLOAD = "x" * 1_500_000  # large enough that a write takes many system calls


def _connection(folder: Path, transport: str) -> Connection:
    return Connection(
        transport=transport,
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder.parent / "control"),  # kombu's default is the cwd
            "store_processed": False,
        },
    )


def _watch(folder: Path, stop: threading.Event, seen: list[str], torn: list[str]) -> None:
    """Read every message file the moment it is listed, as a consumer would."""
    while not stop.is_set():
        for name in os.listdir(folder):
            if not name.endswith(".msg"):
                continue
            try:
                data = (folder / name).read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(data)
            except ValueError:
                torn.append(name)
            else:
                seen.append(name)


def test_published_messages_appear_whole(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    stop = threading.Event()
    seen: list[str] = []
    torn: list[str] = []
    watcher = threading.Thread(target=_watch, args=(folder, stop, seen, torn), daemon=True)
    watcher.start()
    try:
        with _connection(folder, "dashboard.broker:Transport") as conn:
            queue = conn.SimpleQueue("q")
            for i in range(MESSAGES):
                queue.put({"n": i, "body": PAYLOAD})
            received = []
            for _ in range(MESSAGES):
                message = queue.get(timeout=5)
                received.append(message.payload["n"])
                assert message.payload["body"] == PAYLOAD
                message.ack()
            queue.close()
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert torn == []  # no reader ever saw a partly written message
    assert seen  # the watcher did read messages while they were published
    assert sorted(received) == list(range(MESSAGES))
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".msg")] == []
    assert not (Path.cwd() / "control").exists()


def test_settings_use_the_atomic_transport_for_the_embedded_broker() -> None:
    from django.conf import settings

    if settings.CELERY_BROKER_URL == "filesystem://":
        assert settings.CELERY_BROKER_TRANSPORT == "dashboard.broker:Transport"
    assert issubclass(broker.Transport.Channel, broker.Channel)
