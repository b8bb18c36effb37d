"""Process-local caches for the hot path, emptied whenever the config generation moves.

Callers first `await sync(generation)` once per request (see `orgs.generation`), then use
`get`/`put`. Entries never outlive a config change seen by that request.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_generation: int | None = None
_data: dict[tuple[str, Any], Any] = {}
MAX_ENTRIES = 50_000
MISSING = object()


def sync(generation: int) -> None:
    global _generation
    if generation != _generation:
        with _lock:
            _data.clear()
            _generation = generation


def clear() -> None:
    global _generation
    with _lock:
        _data.clear()
        _generation = None


def get(namespace: str, key: Any) -> Any:
    return _data.get((namespace, key), MISSING)


def put(namespace: str, key: Any, value: Any) -> None:
    if len(_data) >= MAX_ENTRIES:
        with _lock:
            _data.clear()
    _data[(namespace, key)] = value
