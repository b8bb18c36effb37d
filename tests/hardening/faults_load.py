"""A steady stream of requests against gateway processes while a part fails, and the judgement of
every answer: a JSON error in the contract's shape for the API, a readable page for the
dashboard, never an HTML 500 or a hang."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT = "/api/v1/llm/chat/completions"
MODELS = "/api/v1/llm/models"


@dataclass
class Outcome:
    kind: str  # "list", "chat" or "page"
    started: float  # time.monotonic()
    elapsed: float
    status: int  # 0: no answer (connection error or client timeout)
    content_type: str = ""
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def finished(self) -> float:
        return self.started + self.elapsed


def problems(outcome: Outcome) -> list[str]:
    """What is wrong with an answer given while a part was failing (empty: acceptable)."""
    if outcome.status == 0:
        return [f"{outcome.kind}: no answer ({outcome.error})"]
    if outcome.status == 200:
        return []
    found: list[str] = []
    text = outcome.body.decode("utf-8", "replace")
    if outcome.status >= 500 and outcome.status != 503:
        found.append(f"{outcome.kind}: status {outcome.status}")
    if "Traceback" in text or 'File "' in text:
        found.append(f"{outcome.kind}: a traceback in the body")
    if outcome.kind == "page":
        if "html" not in outcome.content_type:
            found.append(f"page: {outcome.status} as {outcome.content_type}")
        elif "<h1>" not in text:
            found.append(f"page: {outcome.status} without a readable message")
        return found
    if not outcome.content_type.startswith("application/json"):
        found.append(f"{outcome.kind}: {outcome.status} as {outcome.content_type!r}")
        return found
    try:
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["code"] == outcome.status
        assert {"type", "param"} <= set(error)
    except (ValueError, KeyError, TypeError, AssertionError):
        found.append(f"{outcome.kind}: {outcome.status} not in the contract's shape: {text[:200]}")
    return found


@dataclass
class Load:
    """Threads that send `requests` round-robin to `urls` until stopped; each answer is kept."""

    urls: list[str]
    requests: list[Callable[[httpx.Client], httpx.Response]]
    kinds: list[str]
    threads: int = 3
    timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, index: int) -> None:
        clients = [httpx.Client(base_url=url, timeout=self.timeout) for url in self.urls]
        step = index
        try:
            while not self._stop.is_set():
                client = clients[step % len(clients)]
                which = step % len(self.requests)
                step += 1
                started = time.monotonic()
                try:
                    response = self.requests[which](client)
                    outcome = Outcome(
                        self.kinds[which],
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("content-type", ""),
                        response.content,
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(
                        self.kinds[which],
                        started,
                        time.monotonic() - started,
                        0,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                with self._lock:
                    self.outcomes.append(outcome)
                time.sleep(0.01)
        finally:
            for client in clients:
                client.close()

    def start(self) -> Load:
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=self.timeout + 5)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_all_ok(self, since: float, timeout: float) -> float | None:
        """Seconds from `since` until every kind of request has succeeded with no failure after
        it (measured on the answers' start times); None if that did not happen in `timeout`."""
        deadline = since + timeout
        while time.monotonic() < deadline + 1:
            recovered = recovery_time(self.snapshot(), since, set(self.kinds))
            if recovered is not None:
                return recovered
            time.sleep(0.05)
        return None


def recovery_time(outcomes: list[Outcome], since: float, kinds: set[str]) -> float | None:
    """Seconds from `since` until the end of the last failed answer given after it (0 without
    one), once every kind of request has succeeded at least twice after that; None while that
    is not so."""
    later = [o for o in outcomes if o.finished >= since]
    last_failure = max((o.finished for o in later if not o.ok), default=since)
    after = [o for o in later if o.started > last_failure]
    if any(sum(1 for o in after if o.kind == kind and o.ok) < 2 for kind in kinds):
        return None
    return max(0.0, last_failure - since)


def api_list(token: str) -> Callable[[httpx.Client], httpx.Response]:
    def send(client: httpx.Client) -> httpx.Response:
        return client.get(MODELS, headers={"Authorization": f"Bearer {token}"})

    return send


def api_chat(token: str, model: str) -> Callable[[httpx.Client], httpx.Response]:
    def send(client: httpx.Client) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
        return client.post(CHAT, json=body, headers={"Authorization": f"Bearer {token}"})

    return send


def page(path: str, session_cookie: str) -> Callable[[httpx.Client], httpx.Response]:
    def send(client: httpx.Client) -> httpx.Response:
        return client.get(path, headers={"Cookie": f"sessionid={session_cookie}"})

    return send


def signed_in_session(user: Any) -> str:
    """A database session for `user`, as the login view would create (the cookie's value)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return str(store.session_key)
