"""The Files API (api-contract.md §7) through meetkai-mka1, openai and raw HTTP."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from meetkai_mka1 import errors

from batches.models import Batch, File
from tests.batches.conftest import chat_lines, jsonl, line, parse_jsonl, upload
from tests.conftest import auth

FILES = "/api/v1/llm/files"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"


def stored_blobs(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()]


def post_file(http, who, data: bytes, name: str = "in.jsonl", purpose: str | None = "batch"):
    form = {} if purpose is None else {"purpose": purpose}
    return http.post(
        FILES, headers=auth(who), data=form, files={"file": (name, data, "application/jsonl")}
    )


def test_it_uploads_gets_lists_downloads_and_deletes(world, sdk_for):
    sdk = sdk_for(world.bob)
    data = chat_lines(3, "acme:any")
    file = upload(sdk, data)
    assert file.id.startswith("file-") and len(file.id) == 5 + 24
    assert (file.bytes_, file.filename, file.purpose, file.object) == (
        len(data),
        "in.jsonl",
        "batch",
        "file",
    )
    assert file.status == "processed"
    assert sdk.llm.files.get(file_id=file.id).id == file.id
    listed = sdk.llm.files.list()
    assert [f.id for f in listed.data] == [file.id]
    assert listed.has_more is False
    response = sdk.llm.files.content(file_id=file.id)
    assert response.headers["content-type"] == "application/jsonl"
    assert response.headers["content-disposition"] == 'attachment; filename="in.jsonl"'
    assert response.read() == data
    deleted = sdk.llm.files.delete(file_id=file.id)
    assert deleted.id == file.id and deleted.deleted is True
    with pytest.raises(errors.SDKError) as lost:
        sdk.llm.files.get(file_id=file.id)
    assert lost.value.status_code == 404
    with pytest.raises(errors.NotFoundError) as gone:
        sdk.llm.files.content(file_id=file.id)
    assert gone.value.data.error.code == 404
    with pytest.raises(errors.SDKError) as again:
        sdk.llm.files.delete(file_id=file.id)
    assert again.value.status_code == 404


def test_a_bad_line_is_refused_with_its_number_and_nothing_is_stored(world, sdk_for, settings):
    rows = [line(f"r{i}", "acme:any") for i in range(200)]
    raw = jsonl(rows).splitlines(keepends=True)
    raw[136] = b'{"custom_id": "r136", "method": "POST",\n'  # line 137
    sdk = sdk_for(world.bob)
    with pytest.raises(errors.SDKError) as refused:
        upload(sdk, b"".join(raw))
    assert refused.value.status_code == 400
    assert "line 137" in refused.value.body
    assert File.objects.count() == 0
    assert stored_blobs(settings) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\n\n  \n", "no JSON lines"),
        (b'{"a": 1}\n[1, 2]\n', "line 2: must be a JSON object"),
        (b'{"a": 1}\n{"b": 2}\nnot json\n', "line 3: is not valid JSON"),
        (b'{"a": "\xff\xfe"}\n', "line 1: is not valid UTF-8"),
        (b'{"a": NaN}\n', "line 1: is not valid JSON"),
        (b'{"a": 1e999}\n', "line 1: is not valid JSON"),
        (b'{"a": 1}\n{"a": "x\\u0000"}\n', "line 2: must not contain NUL characters"),
    ],
)
def test_it_refuses_files_that_are_not_jsonl(world, http, settings, data, message):
    response = post_file(http, world.bob, data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", 400)
    assert File.objects.count() == 0
    assert stored_blobs(settings) == []


def test_crlf_blank_lines_and_a_bom_are_fine(world, http):
    data = b"\xef\xbb\xbf" + jsonl([line("a", "m")]).replace(b"\n", b"\r\n") + b"\r\n\r\n"
    data += jsonl([line("b", "m")])
    response = post_file(http, world.bob, data)
    assert response.status_code == 200, response.text
    assert File.objects.get().line_count == 2


@pytest.mark.parametrize(
    ("form", "files", "message"),
    [
        ({}, {"file": ("in.jsonl", b'{"a":1}\n')}, "'purpose' is required"),
        ({"purpose": "batch"}, {}, "'file' is required"),
        ({"purpose": "batch"}, {"upload": ("in.jsonl", b'{"a":1}\n')}, "unexpected file part"),
        ({"purpose": "fun"}, {"file": ("in.jsonl", b'{"a":1}\n')}, "purpose must be one of"),
        (
            {"purpose": "batch_output"},
            {"file": ("in.jsonl", b'{"a":1}\n')},
            "purpose must be one of",
        ),
    ],
)
def test_it_refuses_incomplete_forms(world, http, form, files, message):
    parts = {name: (None, value) for name, value in form.items()} | files
    response = http.post(FILES, headers=auth(world.bob), files=parts)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert File.objects.count() == 0


def test_it_wants_multipart(world, http):
    response = http.post(FILES, headers=auth(world.bob), json={"purpose": "batch"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == 415
    response = http.put(FILES, headers=auth(world.bob))
    assert response.status_code == 405
    assert http.get(FILES).status_code == 401


def test_a_path_in_the_filename_is_dropped(world, http, settings):
    response = post_file(http, world.bob, b'{"a":1}\n', name="../../etc/passwd.jsonl")
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "passwd.jsonl"
    file = File.objects.get()
    assert file.storage_name == f"files/org-acme/{file.public_id}"
    assert [p.name for p in stored_blobs(settings)] == [file.public_id]


def test_it_refuses_files_over_the_size_limit(world, http, settings):
    settings.FILES_MAX_UPLOAD_BYTES = 1000
    small_excess = b'{"a": "' + b"x" * 1200 + b'"}\n'
    response = post_file(http, world.bob, small_excess)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {
        "message": "the file is larger than the maximum of 1000 bytes",
        "type": "invalid_request_error",
        "param": "file",
        "code": 413,
    }
    # Far over the limit: refused from the Content-Length, before the body is read.
    response = post_file(http, world.bob, b'{"a": "' + b"x" * 300_000 + b'"}\n')
    assert response.status_code == 413
    assert File.objects.count() == 0
    assert stored_blobs(settings) == []


def test_it_refuses_too_many_lines_and_overlong_lines(world, http, settings):
    settings.BATCH_MAX_LINES = 5
    response = post_file(http, world.bob, chat_lines(6, "m"))
    assert response.status_code == 400
    assert "line 6: a batch file holds at most 5 requests" in response.json()["error"]["message"]
    assert post_file(http, world.bob, chat_lines(5, "m")).status_code == 200
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 300
    data = jsonl([line("a", "m"), line("b", "m", "x" * 400)])
    response = post_file(http, world.bob, data)
    assert response.status_code == 400
    assert "line 2: is longer than 300 bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("name", "data", "purpose", "content_type"),
    [
        ("notes.txt", b"plain words\n", "user_data", "text/plain"),
        ("notes.md", b"# Title\n", "assistants", "text/markdown"),
        ("table.csv", b"a,b\n1,2\n", "user_data", "text/csv"),
        ("data.json", b'{"a": 1}', "user_data", "application/json"),
        ("rows.jsonl", b'{"a": 1}\n', "evals", "application/jsonl"),
        ("anything", b"no extension, text\n", "user_data", "text/plain"),
        ("doc.pdf", PDF, "assistants", "application/pdf"),
        ("fake.pdf", b"not really a pdf\n", "assistants", "text/plain"),
        ("pic.png", PNG, "vision", "image/png"),
        ("batch.txt", b'{"a": 1}\n', "batch", "application/jsonl"),
    ],
)
def test_content_is_served_with_a_sniffed_type(world, sdk_for, name, data, purpose, content_type):
    sdk = sdk_for(world.bob)
    file = sdk.llm.files.upload(file={"file_name": name, "content": data}, purpose=purpose)
    response = sdk.llm.files.content(file_id=file.id)
    assert response.headers["content-type"] == content_type
    assert response.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert response.read() == data


def test_unknown_binary_files_are_refused(world, http):
    response = post_file(http, world.bob, b"\x00\x01\x02\xff" * 50, "blob.bin", "user_data")
    assert response.status_code == 400
    assert "unsupported file type" in response.json()["error"]["message"]


def test_pagination_follows_the_contract(world, sdk_for, http):
    sdk = sdk_for(world.bob)
    ids = [upload(sdk, chat_lines(1, "m"), name=f"{i}.jsonl").id for i in range(5)]
    newest_first = list(reversed(ids))
    page = sdk.llm.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more is True
    page = sdk.llm.files.list(limit=2, after=newest_first[1])
    assert [f.id for f in page.data] == newest_first[2:4] and page.has_more is True
    page = sdk.llm.files.list(limit=2, after=newest_first[3])
    assert [f.id for f in page.data] == newest_first[4:] and page.has_more is False
    page = sdk.llm.files.list(order="asc", limit=3)
    assert [f.id for f in page.data] == ids[:3]
    raw = http.get(FILES, headers=auth(world.bob), params={"limit": 10**9}).json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[-1], ids[0], False)
    assert raw["object"] == "list"
    for params in ({"limit": 0}, {"limit": -1}, {"limit": "abc"}, {"order": "up"}):
        assert http.get(FILES, headers=auth(world.bob), params=params).status_code == 400
    unknown = http.get(FILES, headers=auth(world.bob), params={"after": "file-nope"})
    assert unknown.status_code == 400
    assert sdk.llm.files.list(purpose="vision").data == []
    empty = http.get(FILES, headers=auth(world.dave)).json()
    assert empty == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_another_orgs_files_are_not_found(world, sdk_for, http):
    file = upload(sdk_for(world.bob), chat_lines(1, "m"))
    other = sdk_for(world.dave)
    with pytest.raises(errors.SDKError) as got:
        other.llm.files.get(file_id=file.id)
    assert got.value.status_code == 404
    with pytest.raises(errors.NotFoundError):
        other.llm.files.content(file_id=file.id)
    with pytest.raises(errors.SDKError) as deleted:
        other.llm.files.delete(file_id=file.id)
    assert deleted.value.status_code == 404
    assert other.llm.files.list().data == []
    # Org A's cursor means nothing to org B.
    assert http.get(FILES, headers=auth(world.dave), params={"after": file.id}).status_code == 400
    assert File.objects.get().deleted_at is None


def test_files_are_scoped_to_the_end_user(world, sdk_for):
    sdk = sdk_for(world.bob)
    mine = upload(sdk, chat_lines(1, "m"), x_on_behalf_of="user-1")
    org_level = upload(sdk, chat_lines(1, "m"))
    assert [f.id for f in sdk.llm.files.list(x_on_behalf_of="user-1").data] == [mine.id]
    assert [f.id for f in sdk.llm.files.list().data] == [org_level.id]
    assert sdk.llm.files.list(x_on_behalf_of="user-2").data == []
    with pytest.raises(errors.SDKError):
        sdk.llm.files.get(file_id=mine.id)
    with pytest.raises(errors.NotFoundError):
        sdk.llm.files.content(file_id=mine.id, x_on_behalf_of="user-2")
    assert sdk.llm.files.content(file_id=mine.id, x_on_behalf_of="user-1").read()


def test_an_unwritable_storage_gives_503_and_no_row(world, http, settings, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the storage wants a folder")
    settings.MEDIA_ROOT = str(blocker / "media")
    response = post_file(http, world.bob, b'{"a":1}\n')
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == 503
    assert File.objects.count() == 0


def test_the_input_of_a_running_batch_cannot_be_deleted(world, sdk_for):
    sdk = sdk_for(world.bob)
    file = upload(sdk, chat_lines(1, "m"))
    # Held by a (pretend) live worker, so no real worker touches it.
    Batch.objects.create(
        org=world.org_a,
        api_key=world.bob.key,
        input_file=File.objects.get(public_id=file.id),
        endpoint="/v1/chat/completions",
        status="in_progress",
        expires_at=timezone.now() + timedelta(hours=1),
        worker_id="elsewhere",
        heartbeat_at=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(errors.SDKError) as busy:
        sdk.llm.files.delete(file_id=file.id)
    assert busy.value.status_code == 409
    Batch.objects.update(status="completed")
    assert sdk.llm.files.delete(file_id=file.id).deleted is True


def test_the_openai_client_uses_files(world, openai_for):
    client = openai_for(world.bob)
    data = chat_lines(2, "m")
    created = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.bytes == len(data) and created.purpose == "batch"
    assert client.files.retrieve(created.id).filename == "in.jsonl"
    assert [f.id for f in client.files.list().data] == [created.id]
    assert parse_jsonl(client.files.content(created.id).read()) == parse_jsonl(data)
    assert client.files.delete(created.id).deleted is True
