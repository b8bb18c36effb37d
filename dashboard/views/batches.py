"""Batches and files of an org (any member). Members see the org's own objects (end user '');
org admins also those that API clients made on behalf of end users. Every write goes through
`batches.services` with a caller for the object's end user, so the services' own scoping and
rules (a running batch's input cannot be deleted...) still apply. Downloads are streamed here
after the membership check, never from a storage path."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import reswap, retarget, trigger_client_event

from batches import services, storage
from batches.models import (
    ACTIVE_STATUSES,
    UPLOAD_PURPOSES,
    Batch,
    BatchStatus,
    File,
    Purpose,
)
from dashboard.views.access import HtmxHttpRequest, OrgAccess, get_org_for_user, wants_fragment
from orgs.auth import Caller
from orgs.errors import ServiceError

PAGE_SIZE = 50
MAX_INPUT_CHOICES = 200
CANCELLABLE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
BADGES = {
    BatchStatus.VALIDATING: "badge-info",
    BatchStatus.IN_PROGRESS: "badge-info",
    BatchStatus.FINALIZING: "badge-info",
    BatchStatus.COMPLETED: "badge-ok",
    BatchStatus.FAILED: "badge-bad",
    BatchStatus.CANCELLING: "badge-warn",
    BatchStatus.CANCELLED: "badge-muted",
    BatchStatus.EXPIRED: "badge-muted",
}


# ---------------------------------------------------------------------------------------------
# Scoping: the one door for the objects of these pages


def visible_batches(access: OrgAccess) -> QuerySet[Batch]:
    if access.is_admin:
        # `batches` scopes by caller, i.e. one end user at a time; admins see them all.
        return Batch.objects.filter(org=access.org).select_related(
            "input_file", "output_file", "error_file"
        )
    return services.batch_queryset(access.caller)


def visible_files(access: OrgAccess) -> QuerySet[File]:
    if access.is_admin:
        return File.objects.filter(org=access.org, deleted_at__isnull=True)
    return services.file_queryset(access.caller)


def caller_for(access: OrgAccess, end_user: str) -> Caller:
    """The signed-in user acting on an object of `end_user` (as X-On-Behalf-Of would)."""
    return replace(access.caller, on_behalf_of=end_user or None)


# ---------------------------------------------------------------------------------------------
# Forms


def _metadata_text(value: Any) -> str:
    if not value:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


class BatchCreateForm(forms.Form):
    input_file = forms.ChoiceField(label="Input file")
    metadata = forms.CharField(
        required=False,
        label="Metadata",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "project=demo"}),
        help_text="Optional: key=value, one a line (at most 16).",
    )

    def __init__(self, *args: Any, files: list[File], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "Pick an uploaded batch file…")]
        for file in files:
            lines = f" · {file.line_count} line{'s' if file.line_count != 1 else ''}"
            choices.append((file.public_id, f"{file.filename} · {file.public_id}{lines}"))
        self.fields["input_file"].choices = choices

    def clean_metadata(self) -> dict[str, str] | None:
        text = self.cleaned_data.get("metadata") or ""
        pairs: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise forms.ValidationError(f"Line {number} is not key=value.")
            pairs[key.strip()] = value.strip()
        return pairs or None

    def add_service_error(self, exc: ServiceError) -> None:
        param = exc.param or ""
        if param == "input_file_id":
            self.add_error("input_file", exc.message)
        elif param.startswith("metadata"):
            self.add_error("metadata", exc.message)
        else:
            self.add_error(None, exc.message)


class UploadForm(forms.Form):
    purpose = forms.ChoiceField(choices=[(p.value, p.value) for p in UPLOAD_PURPOSES])
    file = forms.FileField(label="File")

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        limit = settings.FILES_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"The file is larger than {filesizeformat(limit)}.")
        return upload


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class BatchRow:
    batch: Batch

    @property
    def done(self) -> int:
        return self.batch.completed + self.batch.failed

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.batch.total) if self.batch.total else 0

    @property
    def badge(self) -> str:
        return BADGES.get(self.batch.status, "badge-muted")

    @property
    def active(self) -> bool:
        return self.batch.status in ACTIVE_STATUSES

    @property
    def cancellable(self) -> bool:
        return self.batch.status in CANCELLABLE

    @property
    def finished_at(self) -> datetime | None:
        b = self.batch
        return b.completed_at or b.failed_at or b.cancelled_at or b.expired_at

    @property
    def metadata(self) -> str:
        return _metadata_text(self.batch.metadata)

    @property
    def error_messages(self) -> list[str]:
        data = (self.batch.errors or {}).get("data") if isinstance(self.batch.errors, dict) else []
        out = []
        for item in (data or [])[:3]:
            if isinstance(item, dict):
                line = f"line {item['line']}: " if item.get("line") else ""
                out.append(f"{line}{item.get('message') or item.get('code') or 'error'}")
        return out


def _page(request: HtmxHttpRequest, queryset: QuerySet[Any]) -> dict[str, Any]:
    paginator = Paginator(queryset, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return {
        "page": page,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
    }


# ---------------------------------------------------------------------------------------------
# Batches


def _input_files(access: OrgAccess) -> list[File]:
    files = services.file_queryset(access.caller, purpose=Purpose.BATCH)
    return list(files.order_by("-created_at")[:MAX_INPUT_CHOICES])


def _batch_context(request: HtmxHttpRequest, access: OrgAccess) -> dict[str, Any]:
    context = _page(request, visible_batches(access))
    rows = [BatchRow(b) for b in context["page"].object_list]
    return {
        **context,
        "access": access,
        "nav_section": "batches",
        "rows": rows,
        "polling": any(row.active for row in rows),
    }


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def batch_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET lists the batches (htmx polls the table while one runs); POST creates one."""
    access = get_org_for_user(request, slug)
    files = _input_files(access)
    form = BatchCreateForm(request.POST if request.method == "POST" else None, files=files)
    created: Batch | None = None
    if request.method == "POST" and form.is_valid():
        body: dict[str, Any] = {
            "input_file_id": form.cleaned_data["input_file"],
            "endpoint": services.RUNNABLE_ENDPOINTS[0],
        }
        if form.cleaned_data["metadata"]:
            body["metadata"] = form.cleaned_data["metadata"]
        try:
            batch = services.create_batch(access.caller, body)
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            if not request.htmx:
                messages.success(request, f"Batch {batch.public_id} created.")
                return redirect("dashboard:batch-list", slug=access.org.slug)
            form = BatchCreateForm(files=files)
            created = batch
    context = {**_batch_context(request, access), "form": form, "created": created}
    template = "batches/batch_list.html"
    if wants_fragment(request):
        template += "#batches-panel" if request.method == "POST" else "#batch-table"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def batch_cancel(request: HtmxHttpRequest, slug: str, batch_id: str) -> HttpResponse:
    """GET asks for confirmation (a modal for htmx); POST cancels the batch."""
    access = get_org_for_user(request, slug)
    batch = get_object_or_404(visible_batches(access), public_id=batch_id)
    error = ""
    if request.method == "POST":
        try:
            batch = services.cancel_batch(caller_for(access, batch.end_user), batch.public_id)
        except ServiceError as exc:
            error = exc.message
        else:
            if request.htmx:
                context = {"access": access, "row": BatchRow(batch)}
                response = render(request, "batches/batch_list.html#batch-row", context)
                return trigger_client_event(response, "closeModal")
            messages.success(request, f"Batch {batch.public_id} is being cancelled.")
            return redirect("dashboard:batch-list", slug=access.org.slug)
        if not request.htmx:
            messages.error(request, error)
            return redirect("dashboard:batch-list", slug=access.org.slug)
    context = {"access": access, "nav_section": "batches", "row": BatchRow(batch), "error": error}
    template = "batches/batch_confirm_cancel.html"
    if request.htmx and error:
        # The refusal goes into the open dialog, not into the row the form targets.
        response = render(request, template + "#confirm-dialog", context)
        return reswap(retarget(response, "#modal"), "innerHTML")
    if wants_fragment(request):
        template += "#confirm-dialog"
    return render(request, template, context)


# ---------------------------------------------------------------------------------------------
# Files


def _file_context(request: HtmxHttpRequest, access: OrgAccess) -> dict[str, Any]:
    return {
        **_page(request, visible_files(access)),
        "access": access,
        "nav_section": "batches",
        "max_upload": settings.FILES_MAX_UPLOAD_BYTES,
    }


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def file_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET lists the files; POST uploads one (multipart)."""
    access = get_org_for_user(request, slug)
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
    else:
        form = UploadForm(initial={"purpose": Purpose.BATCH})
    uploaded: File | None = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            file = services.create_file(access.caller, data["file"], data["purpose"])
        except ServiceError as exc:
            form.add_error("purpose" if exc.param == "purpose" else "file", exc.message)
        else:
            if not request.htmx:
                messages.success(request, f"Uploaded {file.filename} as {file.public_id}.")
                return redirect("dashboard:file-list", slug=access.org.slug)
            form = UploadForm(initial={"purpose": data["purpose"]})
            uploaded = file
    context = {**_file_context(request, access), "form": form, "uploaded": uploaded}
    template = "batches/file_list.html"
    if wants_fragment(request):
        template += "#files-panel" if request.method == "POST" else "#file-table"
    return render(request, template, context)


def _running_batch(file: File) -> Batch | None:
    return Batch.objects.filter(input_file=file, status__in=ACTIVE_STATUSES).first()


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def file_delete(request: HtmxHttpRequest, slug: str, file_id: str) -> HttpResponse:
    """GET asks for confirmation (a modal for htmx); POST deletes the file. A file that a running
    batch reads is refused, with the batch named."""
    access = get_org_for_user(request, slug)
    file = get_object_or_404(visible_files(access), public_id=file_id)
    error = ""
    if request.method == "POST":
        try:
            services.delete_file(caller_for(access, file.end_user), file.public_id)
        except ServiceError as exc:
            error = exc.message
        else:
            if request.htmx:
                # An empty answer: the row (the form's target) goes away.
                return trigger_client_event(HttpResponse(""), "closeModal")
            messages.success(request, f"File {file.filename} deleted.")
            return redirect("dashboard:file-list", slug=access.org.slug)
        if not request.htmx:
            messages.error(request, error)
            return redirect("dashboard:file-list", slug=access.org.slug)
    context = {
        "access": access,
        "nav_section": "batches",
        "file": file,
        "busy": _running_batch(file),
        "error": error,
    }
    template = "batches/file_confirm_delete.html"
    if request.htmx and error:
        response = render(request, template + "#confirm-dialog", context)
        return reswap(retarget(response, "#modal"), "innerHTML")
    if wants_fragment(request):
        template += "#confirm-dialog"
    return render(request, template, context)


@require_GET
@login_required
def file_download(request: HtmxHttpRequest, slug: str, file_id: str) -> HttpResponse:
    """The stored bytes of a file the user may see, streamed as an attachment."""
    access = get_org_for_user(request, slug)
    file = get_object_or_404(visible_files(access), public_id=file_id)
    try:
        handle = storage.open_blob(file.storage_name)
    except FileNotFoundError:
        raise Http404("The content of this file is gone.") from None
    except storage.StorageFailed as exc:
        return HttpResponse(exc.message, status=503, content_type="text/plain")
    response = StreamingHttpResponse(storage.iter_blob(handle), content_type=file.content_type)
    response["Content-Length"] = str(file.bytes)
    response["Content-Disposition"] = content_disposition_header(True, file.filename) or ""
    # Uploaded HTML or SVG must never run as a page of this origin.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response
