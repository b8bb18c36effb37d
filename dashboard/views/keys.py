"""API keys of an org (org admins): issue (the raw key is shown once), list and revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import trigger_client_event

from dashboard.forms import ApiKeyForm
from dashboard.views.access import HtmxHttpRequest, get_admin_org_for_user, wants_fragment
from orgs.errors import ServiceError
from orgs.models import ApiKey
from orgs.services import issue_api_key, revoke_api_key

PAGE_SIZE = 50


@require_http_methods(["GET", "POST"])
@login_required
@never_cache  # a raw key is shown once: never from a cache, nor the back/forward cache
@vary_on_headers("HX-Request")
def key_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET lists the org's keys; POST issues one and shows its raw value, this once."""
    access = get_admin_org_for_user(request, slug)
    allow_cluster_admin = bool(getattr(request.user, "is_superuser", False))
    form = ApiKeyForm(
        request.POST if request.method == "POST" else None,
        allow_cluster_admin=allow_cluster_admin,
    )
    issued: ApiKey | None = None
    raw_key = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            issued, raw_key = issue_api_key(
                access.org,
                role=data["role"],
                cluster_admin=bool(data.get("cluster_admin")),
                name=data["name"],
                actor=access.actor,
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            form = ApiKeyForm(allow_cluster_admin=allow_cluster_admin)
    paginator = Paginator(ApiKey.objects.for_org(access.org), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "access": access,
        "nav_section": "keys",
        "form": form,
        "issued": issued,
        "raw_key": raw_key,
        "page": page,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
    }
    template = "orgs/apikey_list.html"
    if wants_fragment(request):
        template += "#keys-panel"
    response = render(request, template, context)
    if raw_key:
        # The raw key must not outlive this response in any cache.
        add_never_cache_headers(response)
    return response


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def key_revoke(request: HtmxHttpRequest, slug: str, key_id: int) -> HttpResponse:
    """GET asks for confirmation (a modal for htmx); POST revokes the key."""
    access = get_admin_org_for_user(request, slug)
    key = get_object_or_404(ApiKey.objects.for_org(access.org), pk=key_id)
    if request.method == "POST":
        key = revoke_api_key(key, actor=access.actor)
        if request.htmx:
            response = render(
                request, "orgs/apikey_list.html#key-row", {"access": access, "key": key}
            )
            return trigger_client_event(response, "closeModal")
        messages.success(request, f"Key {key.prefix}… revoked.")
        return redirect("dashboard:key-list", slug=access.org.slug)
    context = {"access": access, "nav_section": "keys", "key": key}
    template = "orgs/apikey_confirm_revoke.html"
    if wants_fragment(request):
        template += "#confirm-dialog"
    return render(request, template, context)
