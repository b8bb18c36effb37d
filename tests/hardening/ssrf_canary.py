"""Listeners for the SSRF matrix: a canary that records every TCP connection made to it, and a
tiny HTTP server that answers every request with a redirect (to the canary).

The canary listens on 127.0.0.1 and, when the machine has IPv6 loopback, on [::1] at the same
port, so that every loopback spelling of "port P" in a test URL lands on it if anything ever
connects. It never answers: a connection is proof enough that a refused URL was fetched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

REDIRECT_BODY = b"redirect-body-canary-91c2"


@dataclass
class Connection:
    peer: Any
    data: bytes


@dataclass
class _Listener:
    """Accepts connections on its sockets in a thread and hands each to `on_connection`."""

    sockets: list[socket.socket]
    on_connection: Any
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        for sock in self.sockets:
            sock.listen(64)
            sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for sock in self.sockets:
                try:
                    conn, peer = sock.accept()
                except (TimeoutError, OSError):
                    continue
                with conn:
                    self.on_connection(conn, peer)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _bind_loopback(port: int = 0) -> tuple[list[socket.socket], int]:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v4.bind(("127.0.0.1", port))
    port = v4.getsockname()[1]
    sockets = [v4]
    try:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", port))
        sockets.append(v6)
    except OSError:
        pass  # no IPv6 loopback here: [::1] URLs then fail to connect, which is also no fetch
    return sockets, port


class Canary:
    """A TCP listener on loopback that records each connection (and the first bytes sent)."""

    def __init__(self, port: int = 0) -> None:
        sockets, self.port = _bind_loopback(port)
        self.families = [s.family for s in sockets]
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._listener = _Listener(sockets, self._record)

    def _record(self, conn: socket.socket, peer: Any) -> None:
        conn.settimeout(0.2)
        data = b""
        with contextlib.suppress(OSError):
            data = conn.recv(4096)
        with self._lock:
            self.connections.append(Connection(peer, data))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.connections)

    def __enter__(self) -> Canary:
        self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.stop()


class Redirector:
    """Answers every HTTP request with `302 Location: <location>` and a body that must never be
    shown to anyone (S8). Counts the requests it answered."""

    def __init__(self, location: str, host: str = "127.0.0.1") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        self.host = host
        self.port = sock.getsockname()[1]
        self.location = location
        self.requests: list[bytes] = []
        self._listener = _Listener([sock], self._answer)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answer(self, conn: socket.socket, peer: Any) -> None:
        conn.settimeout(1.0)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                piece = conn.recv(4096)
                if not piece:
                    break
                data += piece
        self.requests.append(data)
        head = (
            f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(REDIRECT_BODY)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            conn.sendall(head + REDIRECT_BODY)

    def __enter__(self) -> Redirector:
        self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.stop()


class FakeDNS:
    """A resolver for `registry.upstream.resolve_host`: names in `answers` resolve to the next
    answer in their list (the last one repeats); other names fail like NXDOMAIN. Every lookup is
    counted per name."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: dict[str, int] = {}
        self._lock = threading.Lock()

    def set(self, name: str, *answers: list[str]) -> None:
        with self._lock:
            self.answers[name] = list(answers)
            self.lookups[name] = 0

    def __call__(self, host: str, port: int) -> list[str]:
        name = host.lower().rstrip(".")
        with self._lock:
            if name not in self.answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            count = self.lookups.get(name, 0)
            self.lookups[name] = count + 1
            answers = self.answers[name]
            return list(answers[min(count, len(answers) - 1)])
