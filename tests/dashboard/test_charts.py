"""Axis ticks of the usage charts."""

from __future__ import annotations

import pytest

from dashboard.charts import nice_ticks


@pytest.mark.parametrize(
    ("maximum", "expected"),
    [
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (10, [0, 5, 10]),
        (7, [0, 2, 4, 6, 8]),
        (0.2, [0, 1]),
        (95, [0, 25, 50, 75, 100]),
    ],
)
def test_count_axes_have_whole_ticks(maximum: float, expected: list[float]) -> None:
    ticks = nice_ticks(maximum, whole=True)
    assert ticks == expected
    assert all(t == int(t) for t in ticks)


def test_fractional_steps_remain_for_other_axes() -> None:
    assert nice_ticks(10) == [0, 2.5, 5, 7.5, 10]
    assert nice_ticks(0) == [0, 1]
