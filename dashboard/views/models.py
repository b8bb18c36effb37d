"""The models page: every model the org can use, and create / edit / delete / test for the
org's own models. Operator (YAML) models are read-only here, as in the API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from dashboard.forms import ModelDefinitionForm, ModelFilterForm
from dashboard.views.access import (
    HtmxHttpRequest,
    OrgAccess,
    get_admin_org_for_user,
    get_org_for_user,
    wants_fragment,
)
from orgs.errors import ServiceError
from registry import health, services
from registry.cluster import get_cluster_registry
from registry.models import HealthStatus, ModelAlias, RegistryModel
from registry.resolve import Summary, visible_summaries
from registry.schemas import parse_definition

PAGE_SIZE = 50


def dom_id(prefix: str, value: str) -> str:
    """A stable element id for a model (its id may hold ':' and '/', awkward in selectors)."""
    return f"{prefix}-{hashlib.sha1(value.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ModelRow:
    entry: Summary
    status: HealthStatus | None

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def display_name(self) -> str:
        return self.entry.display_name

    @property
    def health(self) -> str:
        if self.status is None:
            return "unknown"
        return "up" if self.status.is_available else "down"

    @property
    def dom_id(self) -> str:
        return dom_id("model", self.entry.id)

    def matches(self, q: str, aliases: dict[str, list[str]]) -> bool:
        s = self.entry
        haystack = [self.id, self.display_name, s.provider, s.upstream_model]
        haystack += aliases.get(s.health_key) or []
        q = q.casefold()
        return any(q in str(text).casefold() for text in haystack)


_HEALTH_ORDER = {"up": 0, "down": 1, "unknown": 2}
# Sort keys by column; numbers that are not set sort last in either direction.
_SORT_KEYS: dict[str, Any] = {
    "id": lambda r: r.id,
    "name": lambda r: (r.display_name.casefold(), r.id),
    "source": lambda r: (r.entry.source, r.id),
    "format": lambda r: (r.entry.api_format, r.id),
    "context": lambda r: (r.entry.context_window or 0, r.id),
    "rpm": lambda r: (r.entry.rpm or 0, r.id),
    "hidden": lambda r: (r.entry.hidden, r.id),
    "health": lambda r: (_HEALTH_ORDER[r.health], r.id),
}
_UNSET: dict[str, Any] = {
    "name": lambda r: not r.display_name,
    "context": lambda r: r.entry.context_window is None,
    "rpm": lambda r: r.entry.rpm is None,
}


def _sort(rows: list[ModelRow], sort: str) -> None:
    column = sort.lstrip("-")
    rows.sort(key=_SORT_KEYS[column], reverse=sort.startswith("-"))
    if column in _UNSET:
        rows.sort(key=_UNSET[column])  # stable: keeps the order within set / unset


def _aliases(org: Any) -> dict[str, list[str]]:
    """The aliases of the org's models (health key → aliases) and of its granted operator
    models, for the search: one query."""
    out: dict[str, list[str]] = {}
    for model_pk, alias in ModelAlias.objects.filter(org=org).values_list("model_id", "alias"):
        out.setdefault(f"db:{model_pk}", []).append(alias)
    registry = get_cluster_registry()
    for model in registry.models.values():
        out[model.health_key] = list(model.definition.get("aliases") or [])
    return out


def _rows(org: Any, filters: dict[str, str]) -> tuple[list[ModelRow], int]:
    """The filtered, sorted rows and the org's total: a fixed number of queries. Rows carry
    light summaries (no definition is decoded); health is looked up for every row only when
    it filters or sorts, else by the caller for the page shown."""
    summaries = visible_summaries(org)
    need_health = bool(filters["health"]) or filters["sort"].lstrip("-") == "health"
    statuses = services.health_map([s.health_key for s in summaries]) if need_health else {}
    rows = [ModelRow(s, statuses.get(s.health_key)) for s in summaries]
    total = len(rows)
    if filters["q"]:
        aliases = _aliases(org)
        rows = [r for r in rows if r.matches(filters["q"], aliases)]
    if filters["source"]:
        rows = [r for r in rows if r.entry.source == filters["source"]]
    if filters["format"]:
        rows = [r for r in rows if r.entry.api_format == filters["format"]]
    if filters["health"]:
        rows = [r for r in rows if r.health == filters["health"]]
    _sort(rows, filters["sort"])
    return rows, total


def _with_health(rows: list[ModelRow]) -> list[ModelRow]:
    """The rows of one page with their health status: one query."""
    statuses = services.health_map([r.entry.health_key for r in rows])
    return [ModelRow(r.entry, statuses.get(r.entry.health_key)) for r in rows]


SORT_COLUMNS = [
    ("id", "Id"),
    ("name", "Display name"),
    ("source", "Source"),
    ("format", "Format"),
    ("context", "Context"),
    ("rpm", "RPM"),
    ("hidden", "Hidden"),
    ("health", "Health"),
]


@require_GET
@login_required
@vary_on_headers("HX-Request")
def model_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET handler for the models page; an htmx request gets only the `#model-table`."""
    access = get_org_for_user(request, slug)
    filters = ModelFilterForm(request.GET).filters()
    rows, total = _rows(access.org, filters)
    paginator = Paginator(rows, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    need_health = bool(filters["health"]) or filters["sort"].lstrip("-") == "health"
    if not need_health:
        page.object_list = _with_health(list(page.object_list))
    sort = filters["sort"]
    columns = [
        {
            "key": key,
            "label": label,
            "sorted": "asc" if sort == key else "desc" if sort == f"-{key}" else "",
            "next": f"-{key}" if sort == key else key,
        }
        for key, label in SORT_COLUMNS
    ]
    context = {
        "access": access,
        "nav_section": "models",
        "filter_form": ModelFilterForm(initial=filters),
        "filters": filters,
        "filtered": any(filters[k] for k in ("q", "source", "format", "health")),
        "page": page,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        "total": total,
        "columns": columns,
    }
    template = "registry/model_list.html"
    if wants_fragment(request):
        template += "#model-table"
    return render(request, template, context)


def _list_url(access: OrgAccess) -> str:
    return reverse("dashboard:model-list", kwargs={"slug": access.org.slug})


def _done(request: HtmxHttpRequest, url: str) -> HttpResponse:
    """After a successful write: POST/redirect/GET (a client-side redirect for htmx)."""
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _render_form(
    request: HtmxHttpRequest,
    access: OrgAccess,
    form: ModelDefinitionForm,
    *,
    model: RegistryModel | None,
    test_result: dict[str, Any] | None = None,
) -> HttpResponse:
    org = access.org.slug
    if model is None:
        action = reverse("dashboard:model-create", kwargs={"slug": org})
        test_url = reverse("dashboard:model-test", kwargs={"slug": org})
    else:
        action = reverse(
            "dashboard:model-update", kwargs={"slug": org, "model_id": model.registry_id}
        )
        test_url = reverse(
            "dashboard:model-test-stored", kwargs={"slug": org, "model_id": model.registry_id}
        )
    context = {
        "access": access,
        "nav_section": "models",
        "form": form,
        "model": model,
        "action": action,
        "test_url": test_url,
        "list_url": _list_url(access),
        "test_result": test_result,
    }
    template = "registry/model_form.html"
    if wants_fragment(request):
        template += "#model-form"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def model_create(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET shows an empty form; POST adds the model through registry.services.add_model."""
    access = get_admin_org_for_user(request, slug)
    form = ModelDefinitionForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if form.is_valid():
            try:
                model = services.add_model(access.org, form.definition(), actor=access.actor)
            except ServiceError as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Model {model.registry_id} added.")
                return _done(request, _list_url(access))
        form.scrub_secrets()
    return _render_form(request, access, form, model=None)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def model_update(request: HtmxHttpRequest, slug: str, model_id: str) -> HttpResponse:
    """GET shows the stored definition (secrets left out); POST sends what changed to
    registry.services.update_model (a blank secret keeps the stored one)."""
    access = get_admin_org_for_user(request, slug)
    model = get_object_or_404(RegistryModel.objects.for_org(access.org), registry_id=model_id)
    if request.method != "POST":
        return _render_form(
            request, access, ModelDefinitionForm(stored=model.definition), model=model
        )
    form = ModelDefinitionForm(request.POST, stored=model.definition, stored_auth=model.get_auth())
    if form.is_valid():
        try:
            services.update_model(access.org, model.registry_id, form.patch(), actor=access.actor)
        except ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Model {model.registry_id} saved.")
            return _done(request, _list_url(access))
    form.scrub_secrets()
    return _render_form(request, access, form, model=model)


@require_http_methods(["GET", "POST"])
@login_required
@vary_on_headers("HX-Request")
def model_delete(request: HtmxHttpRequest, slug: str, model_id: str) -> HttpResponse:
    """GET asks for confirmation (a modal for htmx); POST removes the model."""
    access = get_admin_org_for_user(request, slug)
    model = get_object_or_404(RegistryModel.objects.for_org(access.org), registry_id=model_id)
    if request.method == "POST":
        services.remove_model(access.org, model.registry_id, actor=access.actor)
        messages.success(request, f"Model {model.registry_id} deleted.")
        return _done(request, _list_url(access))
    context = {
        "access": access,
        "nav_section": "models",
        "model": model,
        "list_url": _list_url(access),
    }
    template = "registry/model_confirm_delete.html"
    if wants_fragment(request):
        template += "#confirm-dialog"
    return render(request, template, context)


@require_POST
@login_required
def model_test(request: HtmxHttpRequest, slug: str, model_id: str | None = None) -> HttpResponse:
    """ "Test connection": probe the form's unsaved definition (with the stored secrets on
    edit) under the same SSRF rules as org models. Shows availability, latency and a short
    error; never a response body."""
    access = get_admin_org_for_user(request, slug)
    model = None
    if model_id is not None:
        model = get_object_or_404(RegistryModel.objects.for_org(access.org), registry_id=model_id)
    form = ModelDefinitionForm(
        request.POST,
        stored=model.definition if model else None,
        stored_auth=model.get_auth() if model else None,
    )
    result: dict[str, Any]
    if not form.is_valid():
        problems = [
            f"{form[name].label}: {message}" if name in form.fields else message
            for name, errors in form.errors.items()
            for message in errors
        ]
        result = {"ok": False, "error": "Fix the form first.", "problems": problems}
    else:
        definition = form.definition()
        try:
            parse_definition(definition)  # the API's schema, so the probe sees a valid model
        except ServiceError as exc:
            result = {"ok": False, "error": exc.message}
        else:
            probe = health.run_probe(
                {k: v for k, v in definition.items() if v is not None}, trusted=False
            )
            result = {
                "ok": probe.is_available,
                "error": probe.error,
                "latency_ms": probe.latency_ms,
                "status_code": probe.status_code,
            }
    form.scrub_secrets()
    if wants_fragment(request):
        return render(request, "registry/model_form.html#test-result", {"test_result": result})
    return _render_form(request, access, form, model=model, test_result=result)
