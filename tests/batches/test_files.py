"""The Files API (api-contract.md §7) through meetkai-mka1, openai and raw HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone
from meetkai_mka1 import errors

from batches.models import Batch, File
from tests.batches.conftest import ROOT, chat_lines, jsonl, line, parse_jsonl, upload, wait_until
from tests.conftest import auth, free_port
from tests.gateway_process import gateway_command

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
    for params in (
        {"limit": 0},
        {"limit": -1},
        {"limit": "abc"},
        {"limit": ""},
        {"limit": ["2", "3"]},
        {"order": "up"},
        {"order": ["asc", "desc"]},
        {"purpose": ["batch", "batch"]},
        {"after": [ids[0], ids[1]]},
    ):
        refused = http.get(FILES, headers=auth(world.bob), params=params)
        assert refused.status_code == 400, params
        assert refused.json()["error"]["param"] == next(iter(params)), refused.json()
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


# --- the size limit whatever the framing, temporary files, memory -----------------------------

BOUNDARY = "test-boundary-5d2f"


def multipart_head(name: str = "in.jsonl", purpose: str = "batch") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()


MULTIPART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def post_chunked(http, who, data: bytes) -> httpx.Response:
    body = multipart_head() + data + MULTIPART_TAIL
    headers = auth(who) | {"Content-Type": MULTIPART_TYPE}
    return http.post(FILES, headers=headers, content=chunks(body))


def open_files_under(folder: Path) -> list[str]:
    """Files this process (the live server runs in it) holds open under `folder`, including
    unlinked ones (Django's spooled request body is an anonymous temporary file)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.fixture
def upload_tmp(settings, tmp_path, monkeypatch) -> Iterator[tuple[Path, list[str]]]:
    """Every temporary file of an upload goes to one folder: Django's spooled request body
    (rolled to disk past 1 KiB) and the upload handler's file (whose names are recorded)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    from django.core.files import temp

    folder = tmp_path / "upload-tmp"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    made: list[str] = []
    real = temp.NamedTemporaryFile

    def recording(*args, **kwargs):
        handle = real(*args, **kwargs)
        made.append(handle.name)
        return handle

    monkeypatch.setattr(temp, "NamedTemporaryFile", recording)
    yield folder, made


def assert_no_temp_files(folder: Path) -> None:
    wait_until(lambda: not any(folder.iterdir()) and not open_files_under(folder), timeout=5)


def assert_refused_for_size(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {
            "message": f"the file is larger than the maximum of {limit} bytes",
            "type": "invalid_request_error",
            "param": "file",
            "code": 413,
        }
    }


def test_a_chunked_upload_over_the_limit_is_refused_while_streaming(
    world, http, settings, upload_tmp
):
    folder, made = upload_tmp
    settings.FILES_MAX_UPLOAD_BYTES = 1000
    sent = 0

    def endless() -> Iterator[bytes]:  # 256 MiB if the server read it all
        nonlocal sent
        yield multipart_head() + b'{"a": "'
        block = b"x" * 64 * 1024
        for _ in range(4096):
            sent += len(block)
            yield block

    headers = auth(world.bob) | {"Content-Type": MULTIPART_TYPE}
    response = http.post(FILES, headers=headers, content=endless())
    assert "content-length" not in response.request.headers
    assert_refused_for_size(response, 1000)
    # The server stopped reading: the client could only send what the sockets buffer.
    assert sent < 32 * 1024 * 1024
    assert File.objects.count() == 0
    assert stored_blobs(settings) == []
    assert made == []  # refused before the view: no upload file was ever made
    assert_no_temp_files(folder)


def test_a_chunked_upload_within_the_limit_is_stored(world, http, settings, upload_tmp):
    folder, made = upload_tmp
    data = chat_lines(300, "m")
    response = post_chunked(http, world.bob, data)
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(data)
    file = File.objects.get()
    assert file.line_count == 300
    assert stored_blobs(settings)[0].read_bytes() == data
    assert len(made) == 1 and made[0].startswith(str(folder))
    assert_no_temp_files(folder)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (chat_lines(50, "m"), 200),
        (chat_lines(50, "m") + b"not json\n", 400),
        (b'{"a": "' + b"x" * 25_000 + b'"}\n', 413),  # the upload handler's limit
        (b'{"a": "' + b"x" * 300_000 + b'"}\n', 413),  # the Content-Length guard's
    ],
    ids=["accepted", "bad-line", "over-in-handler", "over-by-length"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_no_temporary_file_outlives_an_upload(
    world, http, settings, upload_tmp, data, status, chunked
):
    folder, made = upload_tmp
    settings.FILES_MAX_UPLOAD_BYTES = 20_000
    send = post_chunked if chunked else post_file
    response = send(http, world.bob, data)
    assert response.status_code == status, response.text
    if status == 413:
        assert_refused_for_size(response, 20_000)
    assert File.objects.count() == (1 if status == 200 else 0)
    assert len(stored_blobs(settings)) == (1 if status == 200 else 0)
    if len(data) < 50_000:  # not refused before the view: the view wrote the file to disk
        assert len(made) == 1 and made[0].startswith(str(folder))
    assert_no_temp_files(folder)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_the_upload_limit_defaults_to_200_mib(value):
    env = {k: v for k, v in os.environ.items() if k != "FILES_MAX_UPLOAD_BYTES"}
    if value is not None:
        env["FILES_MAX_UPLOAD_BYTES"] = value
    env["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    code = "from django.conf import settings; print(settings.FILES_MAX_UPLOAD_BYTES)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert int(done.stdout) == 200 * 1024 * 1024


def _memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(row.split(":", 1) for row in status.splitlines() if ":" in row)
    return {name: int(fields[name].split()[0]) for name in ("VmHWM", "VmRSS")}


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_large_upload_is_never_held_in_memory(world, batch_env, tmp_path, chunked):
    """A 60 MB batch file through `uvicorn dashboard.asgi:application` in its own process: its
    peak RSS grows by far less than the file (the body and the file are spooled to disk)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    json_line = jsonl([line("r", "m", "y" * 1900)])
    line_bytes = len(json_line)
    count = 60 * 1024 * 1024 // line_bytes  # ~31,000 lines, under BATCH_MAX_LINES
    size = count * line_bytes
    head = multipart_head("big.jsonl")

    def body() -> Iterator[bytes]:
        yield head
        block = json_line * 64
        for _ in range(count // 64):
            yield block
        yield json_line * (count % 64)
        yield MULTIPART_TAIL

    port = free_port()
    env = batch_env | {
        "MEDIA_ROOT": str(tmp_path / "media"),
        "VAR_DIR": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FILES_MAX_UPLOAD_BYTES": str(100 * 1024 * 1024),
    }
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        gateway_command(port, "--lifespan", "off", "--log-level", "warning"),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 40
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if client.get(FILES, headers=auth(world.bob)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        # Warm up the upload path (imports, first database queries) before the baseline.
        small = post_file(client, world.bob, chat_lines(2, "m"))
        before = _memory_kib(server.pid)
        headers = auth(world.bob) | {"Content-Type": MULTIPART_TYPE}
        if not chunked:
            headers["Content-Length"] = str(len(head) + size + len(MULTIPART_TAIL))
        started = time.monotonic()
        response = client.post(FILES, headers=headers, content=body())
        elapsed = time.monotonic() - started
        after = _memory_kib(server.pid)
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert small.status_code == 200
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == size
    assert File.objects.get(public_id=response.json()["id"]).line_count == count
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert growth_mib < 25, (
        f"peak RSS grew by {growth_mib:.1f} MiB for a {size >> 20} MiB file "
        f"(uploaded in {elapsed:.1f} s)"
    )
