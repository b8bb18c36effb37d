"""Health: the last probe of every model the org can use, a small history chart, and "Check
now" for org admins."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.views.access import (
    HtmxHttpRequest,
    get_admin_org_for_user,
    get_org_for_user,
    wants_fragment,
)
from dashboard.views.models import dom_id
from orgs.errors import NotFound
from registry import health, services
from registry.models import HealthCheckResult, HealthStatus
from registry.resolve import Entry, Summary, visible_summaries

PAGE_SIZE = 50
HISTORY_BARS = 30
# The chart: HISTORY_BARS bars of BAR_WIDTH px with a 1 px gap, CHART_HEIGHT px tall.
BAR_WIDTH = 5
CHART_HEIGHT = 28
CHART_WIDTH = HISTORY_BARS * (BAR_WIDTH + 1)


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    height: int
    up: bool
    title: str


@dataclass(frozen=True)
class HealthRow:
    entry: Entry | Summary  # a light summary on the page, a full entry after "Check now"
    status: HealthStatus | None
    bars: list[Bar]

    @property
    def check_mode(self) -> str | None:
        if isinstance(self.entry, Summary):
            return self.entry.check_mode
        return (self.entry.definition.get("healthCheck") or {}).get("mode")

    @property
    def dom_id(self) -> str:
        return dom_id("health", self.entry.id)

    @property
    def state(self) -> str:
        if self.status is None:
            return "unknown"
        return "up" if self.status.is_available else "down"

    @property
    def uptime(self) -> int | None:
        """Per cent of the charted probes that succeeded."""
        if not self.bars:
            return None
        return round(100 * sum(b.up for b in self.bars) / len(self.bars))


def _bars(results: list[HealthCheckResult]) -> list[Bar]:
    """Latency bars, oldest left, newest at the right edge; a failed probe without a latency
    gets a full-height bar so that it stands out."""
    slowest = max((r.latency_ms or 0 for r in results), default=0) or 1
    offset = HISTORY_BARS - len(results)
    bars = []
    for index, r in enumerate(results):
        if r.latency_ms is None:
            height = CHART_HEIGHT if not r.is_available else 2
        else:
            height = max(2, round(r.latency_ms / slowest * CHART_HEIGHT))
        latency = f"{r.latency_ms} ms" if r.latency_ms is not None else "no latency"
        state = "up" if r.is_available else f"down: {r.error or 'failed'}"
        bars.append(
            Bar(
                x=(offset + index) * (BAR_WIDTH + 1),
                y=CHART_HEIGHT - height,
                height=height,
                up=r.is_available,
                title=f"{r.checked_at:%Y-%m-%d %H:%M:%S} UTC · {latency} · {state}",
            )
        )
    return bars


def _history(keys: list[str]) -> dict[str, list[HealthCheckResult]]:
    """The newest HISTORY_BARS probes of each model, oldest first, in one query."""
    ranked = (
        HealthCheckResult.objects.filter(target__in=keys)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("target")],
                order_by=[F("checked_at").desc(), F("id").desc()],
            )
        )
        .filter(rank__lte=HISTORY_BARS)
        .order_by("target", "checked_at", "id")
    )
    out: dict[str, list[HealthCheckResult]] = defaultdict(list)
    for result in ranked:
        out[result.target].append(result)
    return out


def _rows(entries: list[Entry] | list[Summary]) -> list[HealthRow]:
    keys = [e.health_key for e in entries]
    statuses = services.health_map(keys)
    history = _history(keys)
    return [
        HealthRow(e, statuses.get(e.health_key), _bars(history.get(e.health_key, [])))
        for e in entries
    ]


def _chart() -> dict[str, int]:
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bar_width": BAR_WIDTH,
        "bars": HISTORY_BARS,
    }


@require_GET
@login_required
@vary_on_headers("HX-Request")
def health_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET handler for the health table (50 models a page)."""
    access = get_org_for_user(request, slug)
    # Light summaries: no model definition is decoded.
    paginator = Paginator(visible_summaries(access.org, check_mode=True), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    context = {
        "access": access,
        "nav_section": "health",
        "page": page,
        "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        "rows": _rows(list(page.object_list)),
        "chart": _chart(),
    }
    template = "registry/health_list.html"
    if wants_fragment(request):
        template += "#health-table"
    return render(request, template, context)


@require_POST
@login_required
def health_check(request: HtmxHttpRequest, slug: str, model_id: str) -> HttpResponse:
    """Probe one model now (org admins); returns its row."""
    access = get_admin_org_for_user(request, slug)
    try:
        entry = services.get_entry(access.org, model_id)
    except NotFound:
        raise Http404("No such model.") from None
    result = health.check_health(entry, trigger="manual")
    if request.htmx:
        context = {"access": access, "row": _rows([entry])[0], "chart": _chart()}
        return render(request, "registry/health_list.html#health-row", context)
    if result.is_available:
        messages.success(request, f"{entry.id} is up.")
    else:
        messages.error(request, f"{entry.id} is down: {result.error}")
    return redirect("dashboard:health-list", slug=access.org.slug)
