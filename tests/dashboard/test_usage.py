"""The usage page: totals, the groups table and the SVG chart, aggregated in the database (a
fixed number of queries, fast with 10,000 records); org admins only."""

from __future__ import annotations

import random
import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from gateway.models import UsageRecord
from orgs.services import issue_api_key
from tests.dashboard.conftest import HTMX

URL = "/orgs/org-acme/usage"
XSS = "<script>alert(1)</script>"


def record(org: Any, minutes_ago: float = 30, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "org": org,
        "endpoint": "chat.completions",
        "requested_model": "acme:chat-1",
        "model_id": "acme:chat-1",
        "status_code": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "latency_ms": 100,
        "created_at": timezone.now() - timedelta(minutes=minutes_ago),
    }
    values.update(fields)
    return UsageRecord(**values)


@pytest.fixture
def small(people: Any) -> dict[str, Any]:
    key, _ = issue_api_key(people.org_a, name="ci")
    UsageRecord.objects.bulk_create(
        [
            record(people.org_a, api_key=key),
            record(people.org_a, api_key=key, minutes_ago=90, prompt_tokens=20, total_tokens=25),
            record(people.org_a, model_id="acme:chat-2", end_user="user-7", latency_ms=300),
            record(
                people.org_a,
                model_id="",
                requested_model="acme:nope",
                status_code=404,
                prompt_tokens=0,
                completion_tokens=0,
                total_tokens=0,
            ),
            record(people.org_a, minutes_ago=60 * 24 * 3),  # outside 24 h, inside 7 d
            record(people.org_a, minutes_ago=60 * 24 * 40),  # outside 30 d
            record(people.org_b, model_id="globex:chat"),
        ]
    )
    return {"key": key}


def totals(body: str) -> dict[str, str]:
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)", body))


def test_totals_cover_the_period_and_only_this_org(people, login, small):
    client = login(people.alice)
    day = totals(client.get(URL + "?period=24h").content.decode())
    assert day["Requests"] == "4" and day["Errors"].strip() == "1"
    assert day["Prompt tokens"] == "40" and day["Total tokens"] == "55"
    week = totals(client.get(URL).content.decode())  # 7 days by default
    assert week["Requests"] == "5"
    month = totals(client.get(URL + "?period=30d").content.decode())
    assert month["Requests"] == "5"


def test_groups_per_model_key_and_end_user(people, login, small):
    client = login(people.alice)
    body = client.get(URL + "?period=24h").content.decode()
    assert ">acme:chat-1</td>" in body and ">acme:chat-2</td>" in body
    assert ">acme:nope</td>" in body  # refused before routing: the requested name
    assert "globex:chat" not in body
    body = client.get(URL + "?period=24h&group=key").content.decode()
    assert f"{small['key'].prefix}… ci" in body
    assert "no key (dashboard, or a deleted key)" in body
    body = client.get(URL + "?period=24h&group=user").content.decode()
    assert ">user-7</td>" in body and "(no end user)" in body


def test_the_chart_is_inline_svg_with_axes_labels_and_a_legend(people, login, small):
    body = login(people.alice).get(URL + "?period=24h&metric=tokens").content.decode()
    svg = body.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg and "Tokens per model" in svg
    assert svg.count("<rect") >= 3  # one segment per model and hour with tokens
    assert "<title>" in svg and "tokens</title>" in svg
    assert re.search(r'text-anchor="end"[^>]*>\d', svg)  # y axis labels
    assert re.search(r'text-anchor="middle">\d\d:00<', svg)  # hourly x axis labels
    assert '<span class="swatch s0"></span>acme:chat-1' in body
    daily = login(people.alice).get(URL + "?period=30d").content.decode()
    assert re.search(r'text-anchor="middle">[A-Z][a-z]{2} \d\d<', daily)  # per day


def test_errors_chart_and_an_empty_period(people, login, small):
    client = login(people.alice)
    body = client.get(URL + "?period=24h&metric=errors").content.decode()
    assert "Errors per model" in body and "acme:nope" in body.split("<svg", 1)[1]
    UsageRecord.objects.all().delete()
    body = client.get(URL).content.decode()
    assert "No requests in this period." in body and "<svg" not in body.split("<main", 1)[1]


def test_a_custom_period_counts_whole_days(people, login, small):
    today = timezone.now().date()
    client = login(people.alice)
    start = today - timedelta(days=3)
    body = client.get(f"{URL}?period=custom&start={start}&end={today}").content.decode()
    assert totals(body)["Requests"] == "5"
    assert f"{start:%Y-%m-%d} to {today:%Y-%m-%d}" in body


def test_an_invalid_period_shows_errors_and_the_default(people, login, small):
    client = login(people.alice)
    today = timezone.now().date()
    for query, message in (
        (f"period=custom&start={today}&end={today - timedelta(days=2)}", "before the first"),
        ("period=custom&start=2024-01-01", "Pick the last day."),
        ("period=custom&start=2020-01-01&end=2024-01-01", "at most 366 days"),
        ("period=forever", "Select a valid choice"),
        ("period=custom&start=yesterday&end=2024-01-01", "Enter a valid date."),
    ):
        response = client.get(f"{URL}?{query}")
        body = response.content.decode()
        assert response.status_code == 200, query
        assert message in body, query
        assert "Showing the last 7 days instead." in body
        assert totals(body)["Requests"] == "5"


def test_names_from_callers_are_escaped(people, login):
    UsageRecord.objects.bulk_create(
        [
            record(people.org_a, model_id="", requested_model=XSS, status_code=404),
            record(people.org_a, end_user=XSS),
        ]
    )
    client = login(people.alice)
    for group in ("model", "user"):
        for metric in ("requests", "errors"):
            body = client.get(f"{URL}?period=24h&group={group}&metric={metric}").content.decode()
            assert XSS not in body
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_access(people, login, small):
    from django.test import Client

    anonymous = Client().get(URL)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login?next=")
    assert login(people.bob).get(URL).status_code == 403  # members: no usage
    assert login(people.dave).get(URL).status_code == 404
    assert login(people.nobody).get(URL).status_code == 404
    assert login(people.alice).post(URL).status_code == 405
    # Superusers may open any org's usage (the org switcher keeps them on this page).
    body = login(people.root).get("/orgs/org-globex/usage?period=24h").content.decode()
    assert "globex:chat" in body and "acme:chat-1" not in body


def test_htmx_gets_the_panel(people, login, small):
    response = login(people.alice).get(URL + "?period=24h", headers=HTMX)
    assert response.status_code == 200 and b"<html" not in response.content
    assert response.content.lstrip().startswith(b'<div id="usage-panel"')
    assert "HX-Request" in response["Vary"]
    page = login(people.alice).get(URL)
    assert b"<html" in page.content and "HX-Request" in page["Vary"]


@pytest.fixture
def ten_thousand(people: Any) -> None:
    rng = random.Random(7)
    keys = [issue_api_key(people.org_a, name=f"key {i}")[0] for i in range(4)] + [None]
    models = [f"acme:model-{i}" for i in range(9)]
    users = [""] + [f"user-{i}" for i in range(40)]
    now = timezone.now()
    rows = []
    for _ in range(10_000):
        status = 200 if rng.random() > 0.05 else rng.choice([429, 502, 404])
        prompt, completion = rng.randint(5, 500), rng.randint(0, 800)
        rows.append(
            UsageRecord(
                org=people.org_a,
                api_key=rng.choice(keys),
                end_user=rng.choice(users),
                endpoint="chat.completions",
                requested_model="auto",
                model_id=rng.choice(models),
                status_code=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                latency_ms=rng.randint(50, 5000),
                ttft_ms=rng.randint(20, 900),
                created_at=now - timedelta(seconds=rng.randint(0, 30 * 86400)),
            )
        )
    UsageRecord.objects.bulk_create(rows, batch_size=2000)


@pytest.mark.parametrize(
    "query",
    [
        "period=24h",
        "period=7d",
        "period=30d",
        "period=7d&group=key&metric=tokens",
        "period=30d&group=user&metric=errors",
    ],
)
def test_ten_thousand_records_in_a_few_queries_and_fast(
    people, login, ten_thousand, django_assert_max_num_queries, query
):
    client = login(people.alice)
    client.get(f"{URL}?{query}")  # warm up templates and the session
    with django_assert_max_num_queries(10):
        client.get(f"{URL}?{query}")
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        response = client.get(f"{URL}?{query}")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    best = min(timings)
    # Time is measured by benchmarks/dashboard.py, not asserted here (a shared CI machine makes
    # timings flaky); the query bound above is what catches a per-row regression.
    print(f"usage page, 10,000 records, {query}: {best * 1000:.1f} ms")
