"""The project's ASGI application in-process, driven synchronously: `/api/...` reaches the same
lean handler uvicorn serves (`dashboard.asgi.application`), without a socket.

The application runs on an event loop in its own thread (as under uvicorn); a test thread calls
`AsgiClient.request(...)`, which waits for the whole response.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx


class AsgiClient:
    def __init__(self, base_url: str = "http://testserver") -> None:
        from dashboard.asgi import application

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50000))

        async def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30)

        self._client = self._run(make())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def close(self) -> None:
        self._run(self._client.aclose())

        async def cancel_the_rest() -> None:  # e.g. the usage flusher started on this loop
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self._run(cancel_the_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def asgi_client() -> Iterator[AsgiClient]:
    """Body of a fixture: `client = pytest.fixture(asgi_client)` in a test module."""
    client = AsgiClient()
    try:
        yield client
    finally:
        client.close()
