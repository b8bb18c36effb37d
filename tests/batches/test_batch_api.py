"""Creating, listing, reading and cancelling batches (api-contract.md §9): the checks made at
create time, and tenancy. Batches here are held by a pretend worker, so nothing runs them."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest
from celery.signals import before_task_publish
from django.db import transaction
from django.utils import timezone
from meetkai_mka1 import errors

from batches import services, tasks
from batches.models import Batch, File
from orgs.auth import Caller
from tests.batches.conftest import chat_lines, upload, wait_until
from tests.conftest import auth

BATCHES = "/api/v1/llm/batches"


def held(batch_id: str) -> None:
    """Pretend a live worker owns the batch: no real worker will take it."""
    Batch.objects.filter(public_id=batch_id).update(
        worker_id="elsewhere", heartbeat_at=timezone.now() + timedelta(hours=1)
    )


@pytest.fixture
def input_file(world, sdk_for):
    return upload(sdk_for(world.bob), chat_lines(2, "acme:m"))


def test_create_returns_validating_at_once_with_every_field(world, http, input_file, settings):
    settings.BATCH_COMPLETION_WINDOW_SECONDS = 3600
    response = http.post(
        BATCHES,
        headers=auth(world.bob),
        json={
            "input_file_id": input_file.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"description": "evaluation job"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    held(body["id"])
    assert body["id"].startswith("batch_") and len(body["id"]) == 6 + 32
    assert body["expires_at"] == body["created_at"] + 3600
    assert {k: v for k, v in body.items() if k not in ("id", "created_at", "expires_at")} == {
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": input_file.id,
        "completion_window": "24h",
        "status": "validating",
        "in_progress_at": None,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "output_file_id": None,
        "error_file_id": None,
        "errors": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": {"description": "evaluation job"},
    }
    batch = Batch.objects.get(public_id=body["id"])
    assert (batch.api_key, batch.end_user) == (world.bob.key, "")


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"input_file_id": "file-000000000000000000000000"}, 404, "input_file_id"),
        ({"input_file_id": None}, 400, "input_file_id"),
        ({"endpoint": "/v1/embeddings"}, 400, "endpoint"),
        ({"endpoint": "/v1/images/generations"}, 400, "endpoint"),
        ({"endpoint": "/v1/responses"}, 400, "endpoint"),
        ({"endpoint": None}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"completion_window": 24}, 400, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, 400, "metadata"),
        ({"metadata": {"k": "v" * 513}}, 400, "metadata.k"),
        ({"metadata": {"k": 1}}, 400, "metadata.k"),
        ({"metadata": ["k"]}, 400, "metadata"),
        ({"org": "org-globex"}, 400, "org"),
    ],
)
def test_create_checks_the_request(world, http, input_file, fields, status, param):
    body = {"input_file_id": input_file.id, "endpoint": "/v1/chat/completions", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    response = http.post(BATCHES, headers=auth(world.bob), json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert Batch.objects.count() == 0


def test_create_accepts_null_metadata_and_no_window(world, sdk_for, input_file):
    sdk = sdk_for(world.bob)
    batch = sdk.llm.batches.create(
        input_file_id=input_file.id, endpoint="/v1/chat/completions", metadata=None
    )
    held(batch.id)
    assert batch.metadata is None and batch.completion_window == "24h"


def test_create_needs_a_batch_file_of_the_caller(world, sdk_for, http):
    sdk = sdk_for(world.bob)
    notes = sdk.llm.files.upload(
        file={"file_name": "notes.txt", "content": b"hello\n"}, purpose="user_data"
    )
    response = http.post(
        BATCHES,
        headers=auth(world.bob),
        json={"input_file_id": notes.id, "endpoint": "/v1/chat/completions"},
    )
    assert response.status_code == 400
    assert "purpose 'batch'" in response.json()["error"]["message"]
    theirs = upload(sdk_for(world.dave), chat_lines(1, "m"))
    with pytest.raises(errors.SDKError) as foreign:
        sdk.llm.batches.create(input_file_id=theirs.id, endpoint="/v1/chat/completions")
    assert foreign.value.status_code == 404
    deleted = upload(sdk, chat_lines(1, "m"))
    sdk.llm.files.delete(file_id=deleted.id)
    with pytest.raises(errors.SDKError) as gone:
        sdk.llm.batches.create(input_file_id=deleted.id, endpoint="/v1/chat/completions")
    assert gone.value.status_code == 404
    assert Batch.objects.count() == 0


def test_create_needs_a_json_body(world, http):
    response = http.post(BATCHES, headers=auth(world.bob), content=b"[1]")
    assert response.status_code in (400, 415)
    response = http.post(
        BATCHES,
        headers={**auth(world.bob), "content-type": "application/json"},
        content=b"[1]",
    )
    assert response.status_code == 400


def make_batches(sdk, file_id: str, count: int, **kwargs) -> list[str]:
    ids = []
    for _ in range(count):
        batch = sdk.llm.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", **kwargs
        )
        held(batch.id)
        ids.append(batch.id)
    return ids


def test_list_pages_newest_first(world, sdk_for, http, input_file):
    sdk = sdk_for(world.bob)
    ids = list(reversed(make_batches(sdk, input_file.id, 5)))
    page = sdk.llm.batches.list()
    assert [b.id for b in page.data] == ids and page.has_more is False
    page = sdk.llm.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:2] and page.has_more is True
    page = sdk.llm.batches.list(limit=2, after=ids[1])
    assert [b.id for b in page.data] == ids[2:4] and page.has_more is True
    raw = http.get(BATCHES, headers=auth(world.bob), params={"limit": 1000}).json()
    assert (raw["object"], raw["first_id"], raw["last_id"]) == ("list", ids[0], ids[-1])
    for params in (
        {"limit": 0},
        {"limit": "x"},
        {"limit": ""},
        {"limit": ["1", "2"]},
        {"after": "batch_nope"},
        {"after": [ids[0], ids[1]]},
    ):
        assert http.get(BATCHES, headers=auth(world.bob), params=params).status_code == 400
    # Another org sees none of them, and A's cursor means nothing to it.
    assert sdk_for(world.dave).llm.batches.list().data == []
    assert http.get(BATCHES, headers=auth(world.dave), params={"after": ids[0]}).status_code == 400


def test_another_orgs_batch_is_not_found(world, sdk_for, http, input_file):
    (batch_id,) = make_batches(sdk_for(world.bob), input_file.id, 1)
    other = sdk_for(world.dave)
    for call in (other.llm.batches.get, other.llm.batches.cancel):
        with pytest.raises(errors.SDKError) as missing:
            call(batch_id=batch_id)
        assert missing.value.status_code == 404
    assert Batch.objects.get().status == "validating"


def test_batches_are_scoped_to_the_end_user(world, sdk_for):
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(1, "m"), x_on_behalf_of="user-1")
    (batch_id,) = make_batches(sdk, file.id, 1, x_on_behalf_of="user-1")
    assert Batch.objects.get().end_user == "user-1"
    assert [b.id for b in sdk.llm.batches.list(x_on_behalf_of="user-1").data] == [batch_id]
    assert sdk.llm.batches.list().data == []
    with pytest.raises(errors.SDKError):
        sdk.llm.batches.get(batch_id=batch_id)
    with pytest.raises(errors.SDKError):
        sdk.llm.batches.get(batch_id=batch_id, x_on_behalf_of="user-2")
    # The org-level caller cannot use the end user's file either.
    with pytest.raises(errors.SDKError) as foreign:
        sdk.llm.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions")
    assert foreign.value.status_code == 404


def test_cancel_moves_to_cancelling_once_and_refuses_ended_batches(world, sdk_for, input_file):
    sdk = sdk_for(world.bob)
    (batch_id,) = make_batches(sdk, input_file.id, 1)
    first = sdk.llm.batches.cancel(batch_id=batch_id)
    assert first.status == "cancelling" and first.cancelling_at is not None
    again = sdk.llm.batches.cancel(batch_id=batch_id)
    assert (again.status, again.cancelling_at) == ("cancelling", first.cancelling_at)
    for status in ("finalizing", "completed", "failed", "expired", "cancelled"):
        Batch.objects.update(status=status)
        with pytest.raises(errors.SDKError) as refused:
            sdk.llm.batches.cancel(batch_id=batch_id)
        assert refused.value.status_code == 409, status
        assert '"conflict_error"' in refused.value.body


def test_deleting_an_org_deletes_its_files_and_batches(world, sdk_for, input_file):
    make_batches(sdk_for(world.bob), input_file.id, 1)
    world.org_a.delete()
    assert Batch.objects.count() == 0 and File.objects.count() == 0


def test_a_batch_is_enqueued_on_commit_by_its_id_only(world, input_file):
    published: list[tuple[str, Any]] = []

    def record(sender: str, body: Any, **kwargs: Any) -> None:
        published.append((sender, body))

    before_task_publish.connect(record)
    try:
        caller = Caller.for_key(world.bob.key)
        request = {"input_file_id": input_file.id, "endpoint": "/v1/chat/completions"}
        # Rolled back: no batch, and no task message (its on-commit callback is dropped).
        with pytest.raises(RuntimeError), transaction.atomic():
            services.create_batch(caller, request)
            raise RuntimeError("roll back")
        assert not Batch.objects.exists()
        # Committed: nothing is published while the transaction is open, one message after.
        with transaction.atomic():
            batch = services.create_batch(caller, request)
            held(batch.public_id)
            services._publisher.submit(lambda: None).result()  # the publisher is idle
            assert published == []
        wait_until(lambda: published, timeout=10)
        services._publisher.submit(lambda: None).result()
    finally:
        before_task_publish.disconnect(record)
    # The message carries the batch's primary key, nothing else (args, kwargs, embed).
    assert len(published) == 1
    sender, (args, kwargs, _embed) = published[0]
    assert sender == tasks.run_batch.name
    assert list(args) == [batch.pk] and isinstance(args[0], int) and kwargs == {}


def test_run_batch_acknowledges_late_and_takes_an_id():
    task = tasks.run_batch
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    parameters = list(inspect.signature(task.run).parameters.values())
    assert [p.name for p in parameters] == ["batch_pk"]
    assert parameters[0].annotation in (int, "int")
