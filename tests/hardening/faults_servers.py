"""Real parts that the fault tests stop, kill and restart: a private `redis-server` on a free port,
the gateway as `uvicorn dashboard.asgi:application` subprocesses on the test database, and a
separate PostgreSQL connection that terminates the gateway's connections.

Nothing here touches the machine's own Redis or PostgreSQL servers: the private Redis is ours to
stop, and `pg_terminate_backend` is limited to the test database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.fernet import Fernet

from tests.conftest import FIXTURES, free_port
from tests.gateway_process import gateway_command

ROOT = Path(__file__).resolve().parents[2]
# A production-like subprocess (DEBUG off) needs real keys; the test process uses the same ones.
FIELD_KEY = Fernet.generate_key().decode()
SECRET_KEY = "faults-" + "k" * 60
# Lines of a server log that mean a request ended in an unhandled error.
ERROR_MARKS = ("Traceback", "Internal Server Error", "unhandled ")


def database_url() -> str:
    """The URL of the test database the test process uses (SQLite file or PostgreSQL)."""
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(conf['NAME']).resolve()}"
    if conf["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(conf.get("USER") or "", safe="")
        if conf.get("PASSWORD"):
            auth += ":" + quote(conf["PASSWORD"], safe="")
        host = conf.get("HOST") or "127.0.0.1"
        port = conf.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{conf['NAME']}"
    raise RuntimeError(f"no database URL for {conf['ENGINE']}")


def is_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


# ---------------------------------------------------------------------------------------------
# A private Redis


class PrivateRedis:
    """`redis-server` on a free loopback port, without persistence; stop() is SHUTDOWN NOSAVE
    (everything in it is lost, as after a crash), start() brings it back on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            client = self.client()
            try:
                if client.ping():
                    return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, then wait until the process is gone (SIGKILL if it lingers)."""
        if self.proc is None:
            return
        # A raw command: the client library would retry (with backoff) on the closed socket.
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 2) as sock,
        ):
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.stop()


# ---------------------------------------------------------------------------------------------
# The gateway in its own processes


class Gateway:
    """`uvicorn dashboard.asgi:application` as a subprocess on the test database, production-like
    (DEBUG off), with its log in a file that `errors()` scans for unhandled exceptions."""

    def __init__(self, log_dir: Path, env: dict[str, str], name: str = "gateway") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = gateway_command(
            self.port, "--lifespan", "off", "--log-level", "warning", "--no-access-log"
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, token: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.proc.returncode}):\n{self.log()}")
            try:
                response = httpx.get(
                    f"{self.url}/api/v1/llm/models",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2,
                )
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the gateway at {self.url} did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def errors(self) -> list[str]:
        """Log lines that show an unhandled exception (a request that would have been a 500)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(m in line for m in ERROR_MARKS)]


def gateway_env(**overrides: str) -> dict[str, str]:
    """The environment of a production-like gateway subprocess on the test database."""
    from django.conf import settings

    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": SECRET_KEY,
        "FIELD_ENCRYPTION_KEY": FIELD_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
        "DATABASE_URL": database_url(),
        "VAR_DIR": str(settings.VAR_DIR),
        "REDIS_URL": "",
        "CLUSTER_REGISTRY_PATH": str(FIXTURES / "cluster_registry.yaml"),
        "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


@contextlib.contextmanager
def gateways(log_dir: Path, token: str, count: int = 1, **env: str) -> Iterator[list[Gateway]]:
    """`count` gateway processes with the same environment, started together, ready to serve."""
    procs = [Gateway(log_dir, gateway_env(**env), name=f"gateway{i}") for i in range(count)]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_ready(token)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a separate connection that kills the gateway's connections


class Terminator:
    """A psycopg connection of its own that terminates every other connection to the test
    database except the ones named in `keep` (the test process's own)."""

    def __init__(self, keep: set[int]) -> None:
        import psycopg
        from django.db import connection

        conf = connection.settings_dict
        self.keep = keep
        self.conn = psycopg.connect(
            host=conf.get("HOST") or "127.0.0.1",
            port=conf.get("PORT") or 5432,
            user=conf.get("USER") or None,
            password=conf.get("PASSWORD") or None,
            dbname=conf["NAME"],
            autocommit=True,
        )

    def others(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
        return [pid for (pid,) in rows if pid not in self.keep]

    def kill_all(self) -> int:
        """pg_terminate_backend on every connection but ours; how many were terminated."""
        killed = 0
        for pid in self.others():
            (done,) = self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
            killed += bool(done)
        return killed

    def close(self) -> None:
        self.conn.close()


def own_backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])
