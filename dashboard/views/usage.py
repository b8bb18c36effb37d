"""Usage (org admins): requests, tokens and errors of an org over time, per model, per API key
or per end user, with totals. Everything is aggregated in the database, in a handful of queries
whatever the number of usage records; the chart is inline SVG (dashboard/charts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import (
    Avg,
    Case,
    CharField,
    Count,
    F,
    Func,
    IntegerField,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard import charts
from dashboard.views.access import HtmxHttpRequest, get_admin_org_for_user, wants_fragment
from gateway.models import UsageRecord
from orgs.models import ApiKey

PERIODS = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_PERIOD = "7d"
GROUPS = {"model": "model", "key": "API key", "user": "end user"}
METRICS = {"requests": "Requests", "tokens": "Tokens", "errors": "Errors"}
HOURLY_UP_TO = timedelta(days=7)  # longer ranges are charted per day
MAX_CUSTOM_DAYS = 366
TABLE_ROWS = 50
CHART_SERIES = 7  # the biggest groups get their own colour; the rest is "other"


class UsageFilterForm(forms.Form):
    """The period, grouping and charted metric (GET). A bad value is an error shown above the
    chart, which then shows the defaults."""

    period = forms.ChoiceField(
        required=False, choices=[*((k, v[0]) for k, v in PERIODS.items()), ("custom", "Custom")]
    )
    start = forms.DateField(
        required=False,
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    end = forms.DateField(
        required=False,
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    group = forms.ChoiceField(required=False, choices=list(GROUPS.items()))
    metric = forms.ChoiceField(required=False, choices=list(METRICS.items()))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("period") != "custom":
            return data
        start, end = data.get("start"), data.get("end")
        if start is None and "start" not in self.errors:
            self.add_error("start", "Pick the first day.")
        if end is None and "end" not in self.errors:
            self.add_error("end", "Pick the last day.")
        if start and end:
            if start > end:
                self.add_error("end", "The last day is before the first.")
            elif (end - start).days >= MAX_CUSTOM_DAYS:
                self.add_error("end", f"Pick at most {MAX_CUSTOM_DAYS} days.")
        return data


@dataclass(frozen=True)
class Window:
    period: str
    start: datetime
    end: datetime  # exclusive
    label: str

    @property
    def hourly(self) -> bool:
        return self.end - self.start <= HOURLY_UP_TO

    def buckets(self) -> list[datetime]:
        step = timedelta(hours=1) if self.hourly else timedelta(days=1)
        first = self.start.replace(minute=0, second=0, microsecond=0)
        if not self.hourly:
            first = first.replace(hour=0)
        out = []
        while first < self.end:
            out.append(first)
            first += step
        return out


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def window_for(form: UsageFilterForm, now: datetime) -> Window:
    data = form.cleaned_data if form.is_valid() else {}
    period = data.get("period") or DEFAULT_PERIOD
    if period == "custom":
        start, end = data["start"], data["end"]
        label = f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
        return Window(period, _day_start(start), _day_start(end) + timedelta(days=1), label)
    label, span = PERIODS[period]
    return Window(period, now - span, now, label)


def _group_expression(group: str) -> Any:
    if group == "key":
        return F("api_key_id")
    if group == "user":
        return F("end_user")
    # Requests refused before a model was resolved have no model_id: use what was asked for.
    return Case(
        When(model_id="", then=F("requested_model")),
        default=F("model_id"),
        output_field=CharField(),
    )


def _aggregates() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=Q(status_code__gte=400)),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "tokens": Coalesce(Sum("total_tokens"), 0),
        "latency": Avg("latency_ms"),
    }


@dataclass(frozen=True)
class GroupRow:
    label: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    latency: float | None
    share: float  # per cent of the period's total of the charted metric


@dataclass(frozen=True)
class Report:
    totals: dict[str, Any]
    rows: list[GroupRow]
    more_rows: bool
    chart: charts.BarChart

    @property
    def error_rate(self) -> float | None:
        if not self.totals["requests"]:
            return None
        return 100 * self.totals["errors"] / self.totals["requests"]


def _labels(group: str, values: list[Any]) -> dict[Any, str]:
    if group == "key":
        keys = ApiKey.objects.filter(pk__in=[v for v in values if v is not None])
        labels: dict[Any, str] = {
            k.pk: f"{k.prefix}… {k.name}".strip() + (" (revoked)" if k.revoked_at else "")
            for k in keys
        }
        labels[None] = "no key (dashboard, or a deleted key)"
        return labels
    if group == "user":
        return {v: v or "(no end user)" for v in values}
    return {v: v or "(unknown model)" for v in values}


def _bucket_title(hourly: bool) -> Any:
    return (lambda d: f"{d:%Y-%m-%d %H:00} UTC") if hourly else (lambda d: f"{d:%Y-%m-%d}")


def _axis_label(hourly: bool) -> Any:
    if not hourly:
        return lambda d: f"{d:%b %d}"
    return lambda d: f"{d:%b %d}" if d.hour == 0 else f"{d:%H:%M}"


def _bucket_expression(hourly: bool) -> Any:
    """The hour or day of `created_at`. On SQLite, the native strftime() of the stored UTC text:
    Django's TruncHour calls a Python function per row there, which is most of this page's time
    with many records. Elsewhere (PostgreSQL) date_trunc is native anyway."""
    if connection.vendor == "sqlite":
        pattern = "%Y-%m-%d %H:00:00" if hourly else "%Y-%m-%d 00:00:00"
        return Func(Value(pattern), F("created_at"), function="strftime", output_field=CharField())
    return TruncHour("created_at") if hourly else TruncDay("created_at")


def _bucket_key(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite's strftime() text, in UTC
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def _sums() -> dict[str, Any]:
    """Additive aggregates: the chart's buckets add up to the period's totals."""
    return {
        **{k: v for k, v in _aggregates().items() if k != "latency"},
        "latency_sum": Coalesce(Sum("latency_ms"), 0),
        "ttft_sum": Coalesce(Sum("ttft_ms"), 0),
        "ttft_count": Count("ttft_ms"),
    }


def usage_report(records: QuerySet[UsageRecord], window: Window, group: str, metric: str) -> Report:
    """Totals, the groups (biggest first by `metric`) and the chart of `metric` over time, in
    two aggregate queries (and one for key names)."""
    records = records.filter(created_at__gte=window.start, created_at__lt=window.end).order_by()
    expression = _group_expression(group)
    groups = list(
        records.annotate(g=expression)
        .values("g")
        .annotate(**_aggregates())
        .order_by(f"-{metric}", "g")[: TABLE_ROWS + 1]
    )
    more_rows = len(groups) > TABLE_ROWS
    groups = groups[:TABLE_ROWS]
    labels = _labels(group, [g["g"] for g in groups])

    # One pass over the rows by bucket: the biggest groups each, everything else as "other".
    top = [g["g"] for g in groups[:CHART_SERIES] if g[metric]]
    wanted = Q(g__in=[v for v in top if v is not None])
    if None in top:
        wanted |= Q(g__isnull=True)
    per_bucket = (
        records.annotate(g=expression)
        .annotate(
            bucket=_bucket_expression(window.hourly),
            top=Case(When(wanted, then=Value(True)), default=Value(False)),
            series=Case(
                When(wanted, then=expression),
                default=None,
                output_field=IntegerField() if group == "key" else CharField(),
            ),
        )
        .values("bucket", "top", "series")
        .annotate(**_sums())
    )
    buckets = window.buckets()
    index = {when: i for i, when in enumerate(buckets)}
    values = {g: [0.0] * len(buckets) for g in top}
    other = [0.0] * len(buckets)
    sums: dict[str, int] = dict.fromkeys(_sums(), 0)
    for row in per_bucket:
        for name in sums:
            sums[name] += row[name]
        i = index.get(_bucket_key(row["bucket"]))
        if i is not None:
            (values[row["series"]] if row["top"] else other)[i] += row[metric]
    series = [(labels[g], values[g]) for g in top]
    if any(other):
        series.append(("other", other))
    totals: dict[str, Any] = {
        **sums,
        "latency": sums["latency_sum"] / sums["requests"] if sums["requests"] else None,
        "ttft": sums["ttft_sum"] / sums["ttft_count"] if sums["ttft_count"] else None,
    }
    total_metric = totals[metric]
    rows = [
        GroupRow(
            label=labels.get(g["g"], str(g["g"])),
            requests=g["requests"],
            errors=g["errors"],
            prompt_tokens=g["prompt_tokens"],
            completion_tokens=g["completion_tokens"],
            tokens=g["tokens"],
            latency=g["latency"],
            share=100 * g[metric] / total_metric if total_metric else 0.0,
        )
        for g in groups
    ]
    chart = charts.stacked_bars(
        buckets,
        series,
        bucket_label=_bucket_title(window.hourly),
        axis_label=_axis_label(window.hourly),
        unit=METRICS[metric].lower(),
        label=f"{METRICS[metric]} per {GROUPS[group]}, {window.label}",
    )
    return Report(totals=totals, rows=rows, more_rows=more_rows, chart=chart)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def usage(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """GET handler of the usage page (superusers reach any org through the org switcher)."""
    access = get_admin_org_for_user(request, slug)
    form = UsageFilterForm(request.GET)
    valid = form.is_valid()
    data = form.cleaned_data if valid else {}
    group = data.get("group") or "model"
    metric = data.get("metric") or "requests"
    window = window_for(form, timezone.now())
    records = UsageRecord.objects.filter(org=access.org)
    context = {
        "access": access,
        "nav_section": "usage",
        "form": form,
        "window": window,
        "group": group,
        "group_label": GROUPS[group],
        "groups": GROUPS,
        "metric": metric,
        "metric_label": METRICS[metric],
        "metrics": METRICS,
        "empty_chart": f"No {METRICS[metric].lower()} in this period.",
        "periods": {k: v[0] for k, v in PERIODS.items()},
        "report": usage_report(records, window, group, metric),
    }
    template = "dashboard/usage.html"
    if wants_fragment(request):
        template += "#usage-panel"
    return render(request, template, context)
