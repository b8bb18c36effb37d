"""Values that belong to one asyncio event loop (clients whose connections are bound to it).

Keyed by the loop object itself, weakly: a loop created after another was closed never receives
the closed loop's value, as a dict keyed by ``id(loop)`` could hand out when the id is reused. A
forked child never uses its parent's values either (their sockets are the parent's).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``PerLoop(factory).get()``: the running loop's value, made by ``factory`` on first use."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, T]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        pid = os.getpid()
        entry = self._values.get(loop)
        if entry is None or entry[0] != pid:
            entry = self._values[loop] = (pid, self._factory())
        return entry[1]

    def clear(self) -> None:
        self._values.clear()
