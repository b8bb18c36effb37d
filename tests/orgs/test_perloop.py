"""orgs.perloop.PerLoop: one value per running event loop, never a closed loop's."""

from __future__ import annotations

import asyncio
import gc
import itertools

from orgs.perloop import PerLoop


def test_each_loop_gets_its_own_value_and_keeps_it() -> None:
    counter = itertools.count()
    values = PerLoop(lambda: next(counter))

    async def twice() -> tuple[int, int]:
        return values.get(), values.get()

    first = asyncio.run(twice())
    second = asyncio.run(twice())
    assert first[0] == first[1] and second[0] == second[1]
    assert first[0] != second[0]


def test_a_closed_loops_value_is_dropped_even_if_its_id_comes_back() -> None:
    made: list[object] = []

    def factory() -> object:
        made.append(object())
        return made[-1]

    values = PerLoop(factory)
    seen = []
    for _ in range(20):  # CPython often reuses the id of a freed loop for the next one
        loop = asyncio.new_event_loop()
        seen.append((id(loop), loop.run_until_complete(_get(values))))
        loop.close()
        del loop
        gc.collect()
    assert len(made) == 20  # every loop got a fresh value, reused ids or not
    assert len({id(v) for _, v in seen}) == 20
    assert len(values._values) == 0  # nothing kept for closed loops


async def _get(values: PerLoop[object]) -> object:
    return values.get()
