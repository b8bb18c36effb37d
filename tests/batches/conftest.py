"""Batch fixtures: a real `celery -A dashboard worker` subprocess on the test database, the
stand-in upstream, org models served by it, and helpers for JSONL files.

The worker runs with embedded beat (the reconciler) and a short lease, so a killed worker's batch
resumes within seconds. It shares with the test process: the database (the live server's test
database), the file storage (a per-session MEDIA_ROOT), and the broker: a per-session folder for
the filesystem transport (the default), or CELERY_BROKER_URL from the environment (Redis in CI)
with a per-session queue name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import FIXTURES
from tests.upstream_server import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
WORKER_SETTINGS = {
    "BATCH_LEASE_SECONDS": "2",
    "BATCH_RECONCILE_SECONDS": "1",
    "BATCH_CONCURRENCY": "8",
    "BATCH_SLICE_SECONDS": "4",
    "BATCH_LINE_MAX_ATTEMPTS": "3",
}


def _database_url() -> str:
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(conf['NAME']).resolve()}"
    if conf["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(conf.get("USER") or "")
        if conf.get("PASSWORD"):
            auth += ":" + quote(conf["PASSWORD"])
        host = conf.get("HOST") or "127.0.0.1"
        port = conf.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{conf['NAME']}"
    raise RuntimeError(f"no worker database URL for {conf['ENGINE']}")


class Worker:
    """A Celery worker subprocess (its own process group: SIGKILL takes beat with it)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / "worker-0.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        self.starts += 1
        self.log_path = self.log_dir / f"worker-{self.starts}.log"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "-B",
            # BATCH_TEST_WORKER_POOL=prefork runs the suite against `make run`'s kind of worker.
            "--pool",
            os.environ.get("BATCH_TEST_WORKER_POOL", "solo"),
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"batch-test-{uuid.uuid4().hex[:6]}@%h",
            "--schedule",
            str(self.log_dir / "celerybeat-schedule"),
            "-Q",
            self.env["CELERY_QUEUE"],
        ]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if not self.running:
                raise RuntimeError(f"the worker exited:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the worker did not start:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (beat), at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def batch_env(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Session state shared by the test process and the worker: storage, broker, queue."""
    from django.conf import settings
    from django.test.utils import override_settings

    from dashboard.celery import app

    base = tmp_path_factory.mktemp("batches")
    media = base / "media"
    media.mkdir()
    queue = f"batch-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **WORKER_SETTINGS,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(base),
        "MEDIA_ROOT": str(media),
        "CLUSTER_REGISTRY_PATH": str(FIXTURES / "cluster_registry.yaml"),
        "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_QUEUE": queue,
        "PYTHONUNBUFFERED": "1",
    }
    overrides = override_settings(MEDIA_ROOT=str(media), CELERY_TASK_DEFAULT_QUEUE=queue)
    overrides.enable()
    conf = app.conf
    saved = (conf.broker_transport_options, conf.task_default_queue)
    if str(conf.broker_url).startswith("filesystem://"):
        env["CELERY_BROKER_URL"] = ""  # the worker's default: a folder under its VAR_DIR
        folders = {
            "data_folder_in": base / "broker" / "out",
            "data_folder_out": base / "broker" / "out",
            "processed_folder": base / "broker" / "processed",
            "control_folder": base / "broker" / "control",
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        conf.broker_transport_options = {
            **{key: str(value) for key, value in folders.items()},
            "store_processed": False,
        }
    conf.task_default_queue = queue
    _reset_producers(app)
    yield env
    if str(conf.broker_url).startswith("redis"):  # leave nothing behind in a shared broker
        import redis

        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(conf.broker_url)
            client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    conf.broker_transport_options, conf.task_default_queue = saved
    _reset_producers(app)
    overrides.disable()


def _reset_producers(app: Any) -> None:
    """Make the next publish connect with the current configuration (kombu keeps producer pools
    in a global registry keyed by connection: clear it too)."""
    import kombu.pools

    app._pool = None
    app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture(scope="module")
def worker_process(
    batch_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """One worker per test module, stopped when the module ends: a worker left running (with
    beat and its reconciler) would take up batches that later tests create in the same
    database."""
    worker = Worker(batch_env, tmp_path_factory.mktemp("worker-logs"))
    yield worker
    worker.stop()


@pytest.fixture
def worker(world: Any, worker_process: Worker) -> Iterator[Worker]:
    """A running worker for this test (started once per module, restarted if a test killed
    it). Its log is printed when the test fails."""
    worker_process.start()
    yield worker_process
    if not worker_process.running:
        print(worker_process.log())


@pytest.fixture
def no_worker(world: Any, worker_process: Worker) -> Worker:
    """No worker runs: the test drives `batches.runner` itself."""
    worker_process.stop()
    return worker_process


@pytest.fixture
def upstream(settings: Any) -> Iterator[UpstreamServer]:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def batch_model(make_model: Callable[..., Any], upstream: UpstreamServer) -> Callable[..., str]:
    """`batch_model(org, id, upstream_model="chunks@2", **camelCase)`: an org model on the
    stand-in upstream, without an rpm limit unless given."""

    def make(org: Any, model_id: str, upstream_model: str = "chunks@2", **overrides: Any) -> str:
        fields: dict[str, Any] = {
            "baseUrl": upstream.url + "/v1",
            "modelId": upstream_model,
            "rpm": 1_000_000,
        }
        fields.update(overrides)
        make_model(org, model_id, **fields)
        return model_id

    return make


@pytest.fixture(autouse=True)
def _batch_state(
    request: pytest.FixtureRequest, settings: Any, tmp_path: Path, batch_env: dict[str, str]
) -> Iterator[None]:
    """Every batch test publishes to the session's broker and queue (never to a developer's
    `var/broker`); fresh local rate-limit windows; a private MEDIA_ROOT unless the test shares
    the worker's (session) storage."""
    from gateway import limits

    if "worker_process" not in request.fixturenames:
        settings.MEDIA_ROOT = str(tmp_path / "media")
    limits.reset_local()
    yield
    limits.reset_local()


# --- helpers ------------------------------------------------------------------------------------


def line(custom_id: str, model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def chat_lines(count: int, model: str, prefix: str = "req") -> bytes:
    return jsonl([line(f"{prefix}-{i}", model, f"hello {i}") for i in range(count)])


def upload(sdk: Any, data: bytes, name: str = "in.jsonl", **kwargs: Any) -> Any:
    return sdk.llm.files.upload(
        file={"file_name": name, "content": data}, purpose="batch", **kwargs
    )


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in data.splitlines() if raw.strip()]


def content(sdk: Any, file_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return parse_jsonl(sdk.llm.files.content(file_id=file_id, **kwargs).read())


def wait_status(
    sdk: Any, batch_id: str, statuses: tuple[str, ...], timeout: float = 60.0, **kwargs: Any
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.llm.batches.get(batch_id=batch_id, **kwargs)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")
        time.sleep(0.1)


def wait_until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
