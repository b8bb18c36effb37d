"""Usage records survive a database outage: a flush that cannot reach the database keeps them
for the next one (RELIABILITY: nothing lost, no traceback in the log)."""

from __future__ import annotations

import logging

import pytest

from gateway import usage
from gateway.models import UsageRecord
from tests.conftest import database_unreachable


def _fields(world, n: int) -> dict:
    return {
        "org_id": world.org_a.pk,
        "api_key_id": world.bob.key.pk,
        "endpoint": "completions",
        "requested_model": f"m-{n}",
        "status_code": 200,
    }


@pytest.mark.django_db(transaction=True)
def test_a_flush_during_an_outage_keeps_the_records_for_the_next(world, caplog):
    usage.flush()
    before = UsageRecord.objects.count()
    for n in range(3):
        usage.record(**_fields(world, n))
    with database_unreachable(), caplog.at_level(logging.WARNING, logger="gateway.usage"):
        assert usage.flush() == 0
    assert usage.pending() == 3
    messages = [r for r in caplog.records if r.name == "gateway.usage"]
    assert messages and all(r.exc_info is None for r in messages)  # a warning, no traceback
    assert "kept for the next try" in messages[0].getMessage()

    usage.record(**_fields(world, 3))
    assert usage.flush() == 4  # the kept records first, then the new one
    names = list(
        UsageRecord.objects.order_by("pk").values_list("requested_model", flat=True)[before:]
    )
    assert names == ["m-0", "m-1", "m-2", "m-3"]


def test_the_buffer_is_bounded_while_the_database_is_away(world, monkeypatch):
    monkeypatch.setattr(usage, "MAX_BUFFERED", 5)
    kept = [UsageRecord(**_fields(world, n)) for n in range(4)]
    usage._take()  # start from an empty buffer
    for n in range(4, 7):
        usage.record(**_fields(world, n))
    usage._put_back(kept)  # what a failed flush does with the records it took
    assert [r.requested_model for r in usage._take()] == ["m-2", "m-3", "m-4", "m-5", "m-6"]
