"""Auto models: which model `model: "auto"` means on each endpoint for the org."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.views.access import (
    HtmxHttpRequest,
    get_admin_org_for_user,
    get_org_for_user,
    wants_fragment,
)
from orgs.errors import ServiceError
from orgs.models import Org
from registry.cluster import get_cluster_registry
from registry.models import AutoModel
from registry.resolve import Summary, visible_summaries
from registry.schemas import API_FORMATS
from registry.services import clear_auto_model, set_auto_model


@dataclass(frozen=True)
class AutoRow:
    endpoint: str
    override: AutoModel | None
    default_id: str | None
    candidates: list[Summary] = field(default_factory=list)
    usable_ids: frozenset[str] = frozenset()
    error: str = ""
    selected: str = ""  # what the select shows (the user's choice after an error)

    @property
    def effective_id(self) -> str | None:
        return self.override.model_id if self.override else self.default_id

    @property
    def source(self) -> str:
        if self.override:
            return "override"
        return "default" if self.default_id else "none"

    @property
    def available(self) -> bool:
        return self.effective_id is not None and self.effective_id in self.usable_ids

    @property
    def options_html(self) -> SafeString:
        """The candidates' <option>s (escaped), built in Python: a template loop over hundreds
        of models is the slow part of the page."""
        return format_html_join(
            "\n",
            '<option value="{}"{}>{}{}{}</option>',
            (
                (
                    c.id,
                    " selected" if c.id == self.selected else "",
                    c.id,
                    format_html(" — {}", c.display_name) if c.display_name else "",
                    " (operator)" if c.source == "yaml" else "",
                )
                for c in self.candidates
            ),
        )


def _rows(
    org: Org, endpoints: tuple[str, ...] = API_FORMATS, error: str = "", selected: str = ""
) -> list[AutoRow]:
    """One row per endpoint, in three queries whatever the number of endpoints."""
    overrides = {a.endpoint: a for a in AutoModel.objects.filter(org=org)}
    defaults = get_cluster_registry().auto
    entries = visible_summaries(org)
    usable = frozenset(e.id for e in entries)
    return [
        AutoRow(
            endpoint=endpoint,
            override=overrides.get(endpoint),
            default_id=defaults.get(endpoint),
            candidates=[e for e in entries if e.api_format == endpoint],
            usable_ids=usable,
            error=error,
            selected=selected or (overrides[endpoint].model_id if endpoint in overrides else ""),
        )
        for endpoint in endpoints
    ]


@require_GET
@login_required
@vary_on_headers("HX-Request")
def auto_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET handler for the auto-model table (one row per endpoint)."""
    access = get_org_for_user(request, slug)
    context = {"access": access, "nav_section": "auto", "rows": _rows(access.org)}
    template = "registry/auto_list.html"
    if wants_fragment(request):
        template += "#auto-table"
    return render(request, template, context)


@require_POST
@login_required
def auto_update(request: HtmxHttpRequest, slug: str, endpoint: str) -> HttpResponse:
    """Set (`action=set`, `model_id`) or clear (`action=clear`) the org's override of one
    endpoint; returns the endpoint's row, with the service's error inline."""
    access = get_admin_org_for_user(request, slug)
    if endpoint not in API_FORMATS:
        raise Http404("Unknown endpoint.")
    model_id = request.POST.get("model_id", "")
    error = ""
    try:
        if request.POST.get("action") == "clear":
            clear_auto_model(access.org, endpoint, actor=access.actor)
            done = f"Auto model for {endpoint} cleared."
        else:
            set_auto_model(access.org, endpoint, {"modelId": model_id}, actor=access.actor)
            done = f"Auto model for {endpoint} set to {model_id}."
    except ServiceError as exc:
        error = exc.message
    if request.htmx:
        row = _rows(access.org, (endpoint,), error, model_id if error else "")[0]
        return render(request, "registry/auto_list.html#auto-row", {"access": access, "row": row})
    if error:
        messages.error(request, f"{endpoint}: {error}")
    else:
        messages.success(request, done)
    return redirect("dashboard:auto-list", slug=access.org.slug)
