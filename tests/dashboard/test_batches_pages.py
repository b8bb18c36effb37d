"""Batches and files pages: the list with live progress, cancel, downloads through the
dashboard, delete (refused while a batch reads the file), upload and create. Rows are made
through batches.models / batches.services; no worker runs."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from batches import services
from batches.models import Batch, BatchStatus, File
from orgs.auth import Caller
from orgs.models import Role
from tests.dashboard.conftest import HTMX

BATCHES = "/orgs/org-acme/batches"
FILES = "/orgs/org-acme/files"
XSS = "<img src=x onerror=alert(1)>"
LINE = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "acme:chat-1", "messages": [{"role": "user", "content": "hi"}]},
}
JSONL = (json.dumps(LINE) + "\n" + json.dumps({**LINE, "custom_id": "r2"}) + "\n").encode()
STREAMED = "ignore:StreamingHttpResponse must consume asynchronous iterators"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def caller(org: Any, end_user: str | None = None) -> Caller:
    return Caller(org=org, role=Role.ADMIN, on_behalf_of=end_user)


def upload(org: Any, name: str = "in.jsonl", data: bytes = JSONL, **kwargs: Any) -> File:
    purpose = kwargs.pop("purpose", "batch")
    return services.create_file(
        caller(org, **kwargs), SimpleUploadedFile(name, data, "application/jsonl"), purpose
    )


def batch(input_file: File, status: str = BatchStatus.IN_PROGRESS, **fields: Any) -> Batch:
    now = timezone.now()
    values: dict[str, Any] = {
        "org": input_file.org,
        "end_user": input_file.end_user,
        "input_file": input_file,
        "endpoint": "/v1/chat/completions",
        "status": status,
        "total": 10,
        "completed": 2,
        "failed": 1,
        "expires_at": now + timedelta(hours=24),
    }
    values.update(fields)
    return Batch.objects.create(**values)


# ---------------------------------------------------------------------------------------------
# The batch list


def test_the_list_shows_progress_and_polls_while_a_batch_runs(people, login):
    running = batch(upload(people.org_a), metadata={"project": "demo"})
    body = login(people.bob).get(BATCHES).content.decode()
    assert running.public_id in body and "in.jsonl" in body
    assert '<progress max="10" value="3"' in body and "3 / 10 (30%)" in body
    assert 'badge badge-info">In Progress</span>' in body
    assert 'hx-trigger="every 2s"' in body
    assert "project: demo" not in body and "{&quot;project&quot;: &quot;demo&quot;}" in body
    # Once every batch is over, the table stops polling.
    Batch.objects.update(status=BatchStatus.COMPLETED, completed=9, completed_at=timezone.now())
    body = login(people.bob).get(BATCHES, headers=HTMX).content.decode()
    assert "<html" not in body and body.lstrip().startswith('<section id="batch-table"')
    assert "every 2s" not in body and "10 / 10 (100%)" in body
    assert 'badge badge-ok">Completed</span>' in body


def test_output_and_error_files_download_through_the_dashboard(people, login):
    source = upload(people.org_a)
    output = upload(people.org_a, "out.jsonl", b'{"ok": 1}\n', purpose="user_data")
    errors = upload(people.org_a, "err.jsonl", b'{"bad": 1}\n', purpose="user_data")
    File.objects.filter(pk__in=[output.pk, errors.pk]).update(purpose="batch_output")
    batch(source, BatchStatus.COMPLETED, output_file=output, error_file=errors)
    client = login(people.bob)
    body = client.get(BATCHES).content.decode()
    assert f'href="/orgs/org-acme/files/content/{output.public_id}" download>Output' in body
    assert f'href="/orgs/org-acme/files/content/{errors.public_id}" download>Errors' in body
    assert "media" not in body and "files/org-acme" not in body  # never a storage path


@pytest.mark.filterwarnings(STREAMED)
def test_a_download_streams_the_file_as_an_attachment(people, login):
    file = upload(people.org_a, "data.jsonl")
    response = login(people.bob).get(f"{FILES}/content/{file.public_id}")
    assert response.status_code == 200
    assert b"".join(response) == JSONL
    assert response["Content-Disposition"] == 'attachment; filename="data.jsonl"'
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_downloads_check_the_org_and_the_end_user(people, login):
    theirs = upload(people.org_b)
    end_users = upload(people.org_a, end_user="customer-1")
    gone = upload(people.org_a)
    services.delete_file(caller(people.org_a), gone.public_id)
    assert (
        login(people.bob).get(f"/orgs/org-globex/files/content/{theirs.public_id}").status_code
        == 404
    )
    assert login(people.bob).get(f"{FILES}/content/{theirs.public_id}").status_code == 404
    assert login(people.bob).get(f"{FILES}/content/{end_users.public_id}").status_code == 404
    assert login(people.bob).get(f"{FILES}/content/{gone.public_id}").status_code == 404
    assert login(people.dave).get(f"{FILES}/content/{end_users.public_id}").status_code == 404


@pytest.mark.filterwarnings(STREAMED)
def test_admins_also_see_and_fetch_end_user_objects(people, login):
    file = upload(people.org_a, "theirs.jsonl", end_user="customer-1")
    theirs = batch(file)
    body = login(people.alice).get(BATCHES).content.decode()
    assert theirs.public_id in body and "End user" in body and ">customer-1</td>" in body
    assert theirs.public_id not in login(people.bob).get(BATCHES).content.decode()
    response = login(people.alice).get(f"{FILES}/content/{file.public_id}")
    assert response.status_code == 200 and b"".join(response) == JSONL


def test_cancel_asks_first(people, login):
    running = batch(upload(people.org_a))
    client = login(people.bob)
    page = client.get(f"{BATCHES}/cancel/{running.public_id}")
    assert page.status_code == 200 and b"<html" in page.content
    modal = client.get(f"{BATCHES}/cancel/{running.public_id}", headers=HTMX).content.decode()
    assert 'role="dialog"' in modal and f'hx-target="#batch-{running.public_id}"' in modal
    running.refresh_from_db()
    assert running.status == BatchStatus.IN_PROGRESS


def test_cancel_in_the_modal_updates_the_row(people, login):
    running = batch(upload(people.org_a))
    response = login(people.bob).post(f"{BATCHES}/cancel/{running.public_id}", headers=HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="batch-{running.public_id}"')
    assert 'badge badge-warn">Cancelling</span>' in body and ">Cancel</a>" not in body
    assert json.loads(response["HX-Trigger"]) == {"closeModal": {}}
    running.refresh_from_db()
    assert running.status == BatchStatus.CANCELLING and running.cancelling_at is not None


def test_cancel_without_javascript_redirects(people, login):
    running = batch(upload(people.org_a))
    client = login(people.bob)
    response = client.post(f"{BATCHES}/cancel/{running.public_id}")
    assert response.status_code == 302 and response["Location"] == BATCHES
    assert f"Batch {running.public_id} is being cancelled." in client.get(BATCHES).content.decode()


def test_a_finished_batch_cannot_be_cancelled(people, login):
    done = batch(upload(people.org_a), BatchStatus.COMPLETED)
    response = login(people.bob).post(f"{BATCHES}/cancel/{done.public_id}", headers=HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#modal" and response["HX-Reswap"] == "innerHTML"
    assert "has already ended (completed); it cannot be cancelled" in body
    assert ">Cancel batch</button>" not in body
    done.refresh_from_db()
    assert done.status == BatchStatus.COMPLETED


def test_admins_cancel_end_user_batches_and_members_cannot(people, login):
    theirs = batch(upload(people.org_a, end_user="customer-1"))
    assert login(people.bob).post(f"{BATCHES}/cancel/{theirs.public_id}").status_code == 404
    assert login(people.dave).post(f"{BATCHES}/cancel/{theirs.public_id}").status_code == 404
    login(people.alice).post(f"{BATCHES}/cancel/{theirs.public_id}", headers=HTMX)
    theirs.refresh_from_db()
    assert theirs.status == BatchStatus.CANCELLING


def test_the_list_costs_a_fixed_number_of_queries(people, login, django_assert_max_num_queries):
    file = upload(people.org_a)
    for _ in range(30):
        batch(file, output_file=file, error_file=file)
    client = login(people.alice)
    client.get(BATCHES)
    with django_assert_max_num_queries(9):
        client.get(BATCHES)


# ---------------------------------------------------------------------------------------------
# Creating a batch


def test_creating_a_batch_from_an_uploaded_file(people, login):
    file = upload(people.org_a)
    upload(people.org_a, "notes.txt", b"hello", purpose="user_data")  # not offered
    client = login(people.bob)
    page = client.get(BATCHES).content.decode()
    assert f'<option value="{file.public_id}">in.jsonl · {file.public_id} · 2 lines' in page
    assert "notes.txt" not in page
    response = client.post(
        BATCHES,
        {"input_file": file.public_id, "metadata": "project=demo\nowner = bob"},
        headers=HTMX,
    )
    body = response.content.decode()
    created = Batch.objects.get()
    assert response.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<div id="batches-panel"')
    assert f'Batch <span class="mono">{created.public_id}</span> created' in body
    assert created.input_file == file and created.status == BatchStatus.VALIDATING
    assert created.metadata == {"project": "demo", "owner": "bob"}
    assert created.endpoint == "/v1/chat/completions" and created.end_user == ""


def test_creating_without_javascript_redirects_with_a_message(people, login):
    file = upload(people.org_a)
    client = login(people.bob)
    response = client.post(BATCHES, {"input_file": file.public_id})
    assert response.status_code == 302 and response["Location"] == BATCHES
    assert "Batch batch_" in client.get(BATCHES).content.decode()


def test_an_invalid_batch_form_comes_back_with_errors(people, login):
    file = upload(people.org_a)
    client = login(people.bob)
    for data, message in (
        ({"input_file": ""}, "This field is required."),
        ({"input_file": "file-nope"}, "Select a valid choice."),
        ({"input_file": file.public_id, "metadata": "no equals sign"}, "Line 1 is not key=value."),
        (
            {"input_file": file.public_id, "metadata": "\n".join(f"k{i}=v" for i in range(17))},
            "metadata holds at most 16 pairs",
        ),
    ):
        response = client.post(BATCHES, data, headers=HTMX)
        assert response.status_code == 200
        assert message in response.content.decode(), data
    assert not Batch.objects.exists()
    page = client.post(BATCHES, {"input_file": ""})
    assert page.status_code == 200 and b"<html" in page.content


# ---------------------------------------------------------------------------------------------
# Files


def test_the_files_tab_lists_files(people, login):
    file = upload(people.org_a, XSS + ".jsonl")
    upload(people.org_b, "globex.jsonl")
    body = login(people.bob).get(FILES).content.decode()
    assert file.public_id in body and "globex.jsonl" not in body
    assert XSS not in body and "&lt;img src=x onerror=alert(1)&gt;.jsonl" in body
    assert ">batch</span>" in body and "2 lines" not in body
    fragment = login(people.bob).get(FILES, headers=HTMX).content.decode()
    assert "<html" not in fragment and fragment.lstrip().startswith('<section id="file-table"')


def test_uploading_a_file(people, login):
    client = login(people.bob)
    data = {"purpose": "batch", "file": SimpleUploadedFile("new.jsonl", JSONL)}
    response = client.post(FILES, data, headers=HTMX)
    body = response.content.decode()
    file = File.objects.get()
    assert body.lstrip().startswith('<div id="files-panel"')
    assert f'as <span class="mono">{file.public_id}</span> (2 lines)' in body
    assert (file.filename, file.purpose, file.line_count, file.end_user) == (
        "new.jsonl",
        "batch",
        2,
        "",
    )


def test_a_bad_upload_comes_back_with_errors(people, login, settings):
    client = login(people.bob)
    bad = SimpleUploadedFile("bad.jsonl", b"{not json\n")
    body = client.post(FILES, {"purpose": "batch", "file": bad}, headers=HTMX).content.decode()
    assert "line 1" in body and 'class="error"' in body
    body = client.post(FILES, {"purpose": "batch"}, headers=HTMX).content.decode()
    assert "This field is required." in body
    body = client.post(FILES, {"purpose": "batch_output", "file": bad}).content.decode()
    assert "Select a valid choice." in body and "<html" in body
    settings.FILES_MAX_UPLOAD_BYTES = 10
    big = SimpleUploadedFile("big.jsonl", JSONL)
    body = client.post(FILES, {"purpose": "batch", "file": big}, headers=HTMX).content.decode()
    assert "The file is larger than 10" in body
    assert not File.objects.exists()


def test_deleting_a_file_asks_first_then_removes_the_row(people, login):
    file = upload(people.org_a)
    client = login(people.bob)
    modal = client.get(f"{FILES}/delete/{file.public_id}", headers=HTMX).content.decode()
    assert 'role="dialog"' in modal and ">Delete file</button>" in modal
    assert f'hx-target="#file-{file.public_id}"' in modal
    response = client.post(f"{FILES}/delete/{file.public_id}", headers=HTMX)
    assert response.status_code == 200 and response.content == b""
    assert json.loads(response["HX-Trigger"]) == {"closeModal": {}}
    file.refresh_from_db()
    assert file.deleted_at is not None
    assert file.public_id not in client.get(FILES).content.decode()


def test_the_input_of_a_running_batch_cannot_be_deleted(people, login):
    file = upload(people.org_a)
    running = batch(file)
    client = login(people.bob)
    modal = client.get(f"{FILES}/delete/{file.public_id}", headers=HTMX).content.decode()
    assert f'This file is the input of batch <span class="mono">{running.public_id}</span>' in modal
    assert ">Delete file</button>" not in modal
    response = client.post(f"{FILES}/delete/{file.public_id}", headers=HTMX)
    assert response["HX-Retarget"] == "#modal"
    assert f"is the input of batch {running.public_id}, which is still in_progress" in (
        response.content.decode()
    )
    page = client.post(f"{FILES}/delete/{file.public_id}")
    assert page.status_code == 302
    assert "cancel it or wait until it ends" in client.get(FILES).content.decode()
    file.refresh_from_db()
    assert file.deleted_at is None


def test_members_cannot_delete_end_user_files(people, login):
    theirs = upload(people.org_a, end_user="customer-1")
    assert login(people.bob).post(f"{FILES}/delete/{theirs.public_id}").status_code == 404
    login(people.alice).post(f"{FILES}/delete/{theirs.public_id}", headers=HTMX)
    theirs.refresh_from_db()
    assert theirs.deleted_at is not None


def test_end_user_names_and_batch_errors_are_escaped(people, login):
    file = upload(people.org_a, end_user=XSS)
    batch(
        file,
        BatchStatus.FAILED,
        errors={"object": "list", "data": [{"code": "invalid", "message": XSS, "line": 3}]},
        metadata={"note": XSS},
    )
    for url in (BATCHES, FILES):
        body = login(people.alice).get(url).content.decode()
        assert XSS not in body
        assert "&lt;img src=x onerror=alert(1)&gt;" in body
    body = login(people.alice).get(BATCHES).content.decode()
    assert "line 3: &lt;img" in body


# ---------------------------------------------------------------------------------------------
# Access


ENDPOINTS = [
    ("GET", BATCHES),
    ("POST", BATCHES),
    ("GET", BATCHES + "/cancel/{batch}"),
    ("POST", BATCHES + "/cancel/{batch}"),
    ("GET", FILES),
    ("POST", FILES),
    ("GET", FILES + "/delete/{file}"),
    ("POST", FILES + "/delete/{file}"),
    ("GET", FILES + "/content/{file}"),
]


@pytest.fixture
def objects(people: Any) -> dict[str, str]:
    file = upload(people.org_a)
    return {"file": file.public_id, "batch": batch(file).public_id}


@pytest.mark.filterwarnings(STREAMED)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_access(people, login, objects, method, path):
    url = path.format(**objects)
    call = getattr(Client(), method.lower())
    anonymous = call(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login?next=")
    for user in (people.dave, people.nobody):
        assert getattr(login(user), method.lower())(url).status_code == 404
    assert login(people.bob).put(url).status_code == 405
    if method == "POST":
        strict = login(people.bob, enforce_csrf_checks=True)
        assert strict.post(url).status_code == 403
        assert strict.post(url, headers=HTMX).status_code == 403
    assert Batch.objects.get().status == BatchStatus.IN_PROGRESS
    assert File.objects.get().deleted_at is None


@pytest.mark.parametrize("url", [BATCHES, FILES])
def test_pages_are_whole_and_vary_on_htmx(people, login, objects, url):
    page = login(people.bob).get(url)
    assert b"<html" in page.content and "HX-Request" in page["Vary"]
    assert page.content.count(b'hx-headers=\'{"X-CSRFToken": "') == 1
