"""Grants: which orgs may use which operator (YAML) models. Cluster admins (superusers) only."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.views.access import HtmxHttpRequest, require_cluster_admin, wants_fragment
from orgs.auth import Caller
from orgs.errors import InvalidRequest, ServiceError
from orgs.models import Org, Role
from registry.cluster import ClusterModel, get_cluster_registry
from registry.models import ClusterGrant
from registry.services import put_grants

PAGE_SIZE = 25
ACTIONS = ("grant", "revoke", "grant-all", "revoke-all")


@dataclass(frozen=True)
class GrantCell:
    model: ClusterModel
    granted: bool


@dataclass(frozen=True)
class GrantRow:
    org: Org
    cells: list[GrantCell]
    error: str = ""

    @property
    def count(self) -> int:
        return sum(cell.granted for cell in self.cells)


def _granted(orgs: list[Org]) -> dict[int, set[str]]:
    """The granted model ids of each org, in one query."""
    out: dict[int, set[str]] = {org.pk: set() for org in orgs}
    for org_id, model_id in ClusterGrant.objects.filter(org__in=orgs).values_list(
        "org_id", "model_id"
    ):
        out[org_id].add(model_id)
    return out


def _rows(orgs: list[Org], errors: dict[int, str] | None = None) -> list[GrantRow]:
    models = get_cluster_registry().sorted_models
    granted = _granted(orgs)
    return [
        GrantRow(
            org=org,
            cells=[GrantCell(m, m.id in granted[org.pk]) for m in models],
            error=(errors or {}).get(org.pk, ""),
        )
        for org in orgs
    ]


@require_GET
@login_required
@vary_on_headers("HX-Request")
def grant_list(request: HtmxHttpRequest) -> HttpResponse:
    """GET handler for the matrix of orgs × cluster models; htmx gets `#grant-table`."""
    require_cluster_admin(request)
    q = request.GET.get("q", "").strip()[:200]
    orgs = Org.objects.order_by("slug")
    if q:
        orgs = orgs.filter(Q(slug__icontains=q) | Q(name__icontains=q))
    paginator = Paginator(orgs, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "nav_section": "grants",
        "q": q,
        "page": page,
        "page_number": page.number,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        "rows": _rows(list(page.object_list)),
        "models": get_cluster_registry().sorted_models,
    }
    template = "registry/grant_list.html"
    if wants_fragment(request):
        template += "#grant-table"
    return render(request, template, context)


def _wanted(current: set[str], action: str, model_id: str, all_ids: set[str]) -> set[str]:
    if action == "grant":
        return current | {model_id}
    if action == "revoke":
        return current - {model_id}
    if action == "grant-all":
        return set(all_ids)
    if action == "revoke-all":
        return set()
    raise InvalidRequest("unknown action")


@require_POST
@login_required
def grant_update(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """Grant or revoke one model (or all) for one org; returns the org's row."""
    require_cluster_admin(request)
    org = get_object_or_404(Org, slug=slug)
    actor = Caller.for_user(request.user, org, Role.ADMIN).actor
    action = request.POST.get("action", "")
    model_id = request.POST.get("model", "")
    error = ""
    try:
        # put_grants replaces the whole set; the org row is locked first so that two clicks
        # on the same row (two admins, two tabs) both count.
        with transaction.atomic():
            Org.objects.select_for_update().filter(pk=org.pk).first()
            all_ids = set(get_cluster_registry().models)
            current = (
                set(ClusterGrant.objects.filter(org=org).values_list("model_id", flat=True))
                & all_ids
            )
            put_grants(org, sorted(_wanted(current, action, model_id, all_ids)), actor=actor)
    except ServiceError as exc:
        error = exc.message
    if request.htmx:
        context = {
            "row": _rows([org], {org.pk: error})[0],
            "q": request.POST.get("q", ""),
            "page_number": request.POST.get("page", ""),
        }
        return render(request, "registry/grant_list.html#grant-row", context)
    if error:
        messages.error(request, f"{org.slug}: {error}")
    else:
        messages.success(request, f"Grants of {org.slug} updated.")
    query = {k: request.POST[k] for k in ("q", "page") if request.POST.get(k)}
    url = reverse("dashboard:grant-list")
    return redirect(f"{url}?{urlencode(query)}" if query else url)
