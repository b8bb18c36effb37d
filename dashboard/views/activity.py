"""The audit trail (org admins): who changed what and when, newest first, 50 a page, filtered by
actor, action and date. Superusers may also look at another org or at every org at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.views.access import (
    HtmxHttpRequest,
    OrgAccess,
    get_admin_org_for_user,
    orgs_for_user,
    wants_fragment,
)
from orgs.models import AuditEvent

PAGE_SIZE = 50
CHANGES_PREVIEW = 140  # characters of `changes` shown before "more"
ALL_ORGS = "*"
MAX_ORG_CHOICES = 500


def _date_widget() -> forms.DateInput:
    return forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class ActivityFilterForm(forms.Form):
    actor = forms.CharField(
        required=False,
        max_length=300,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "e.g. user:alice"}),
    )
    action = forms.ChoiceField(required=False, label="Kind")
    start = forms.DateField(required=False, label="From", widget=_date_widget())
    end = forms.DateField(required=False, label="To", widget=_date_widget())
    org = forms.ChoiceField(required=False, label="Org")

    def __init__(self, *args: Any, actions: list[str], orgs: list[str] | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Any kind"), *((a, a) for a in actions)]
        if orgs is None:
            del self.fields["org"]
        else:
            self.fields["org"].choices = [
                ("", "This org"),
                (ALL_ORGS, "All orgs"),
                *((slug, slug) for slug in orgs),
            ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            self.add_error("end", "The last day is before the first.")
        return data


@dataclass(frozen=True)
class EventRow:
    event: AuditEvent

    @property
    def changes(self) -> str:
        """`changes` as compact JSON (escaped by the template, like every other value)."""
        if not self.event.changes:
            return ""
        return json.dumps(
            self.event.changes, ensure_ascii=False, sort_keys=True, separators=(", ", ": ")
        )

    @property
    def preview(self) -> str:
        text = self.changes
        return text if len(text) <= CHANGES_PREVIEW else text[:CHANGES_PREVIEW] + "…"


def _day_start(day: Any) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def filtered_events(access: OrgAccess, data: dict[str, Any]) -> QuerySet[AuditEvent]:
    org = data.get("org") or ""
    if org == ALL_ORGS:
        events = AuditEvent.objects.all()
    elif org:
        # By slug, so that the history of a deleted org stays reachable.
        events = AuditEvent.objects.filter(org_slug=org)
    else:
        events = AuditEvent.objects.filter(org=access.org)
    if data.get("actor"):
        events = events.filter(actor__icontains=data["actor"])
    if data.get("action"):
        events = events.filter(action=data["action"])
    if data.get("start"):
        events = events.filter(created_at__gte=_day_start(data["start"]))
    if data.get("end"):
        events = events.filter(created_at__lt=_day_start(data["end"]) + timedelta(days=1))
    return events.order_by("-created_at", "-id")


@require_GET
@login_required
@vary_on_headers("HX-Request")
def activity(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET handler of the audit trail."""
    access = get_admin_org_for_user(request, slug)
    superuser = bool(getattr(request.user, "is_superuser", False))
    orgs = None
    if superuser:
        orgs = list(
            orgs_for_user(request.user)
            .order_by("slug")
            .values_list("slug", flat=True)[:MAX_ORG_CHOICES]
        )
    actions = list(
        AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
    )
    form = ActivityFilterForm(request.GET, actions=actions, orgs=orgs)
    data = form.cleaned_data if form.is_valid() else {}
    paginator = Paginator(filtered_events(access, data), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "access": access,
        "nav_section": "activity",
        "form": form,
        "show_org": bool(data.get("org")),
        "page": page,
        "rows": [EventRow(e) for e in page.object_list],
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
    }
    template = "dashboard/activity.html"
    if wants_fragment(request):
        template += "#activity-panel"
    return render(request, template, context)
