"""Health: the last result of every model, a history chart, and "Check now"."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from registry.models import HealthCheckResult, HealthStatus
from tests.dashboard.conftest import HTMX
from tests.upstream_server import UpstreamServer

URL = "/orgs/org-acme/health"


@pytest.fixture
def upstream(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


def history(target: str, count: int, *, error: str = "GET https://h/health: HTTP 503") -> None:
    now = timezone.now()
    HealthCheckResult.objects.bulk_create(
        [
            HealthCheckResult(
                target=target,
                is_available=i % 4 != 0,
                checked_at=now - timedelta(minutes=count - i),
                latency_ms=None if i % 4 == 0 else 50 + i,
                status_code=200 if i % 4 else 503,
                error=None if i % 4 else error,
            )
            for i in range(count)
        ]
    )


def test_it_shows_the_last_result_and_a_chart(people, login, make_model, granted):
    model = make_model(people.org_a)
    HealthStatus.objects.create(
        target=model.health_key,
        is_available=False,
        checked_at=timezone.now(),
        latency_ms=321,
        error="GET https://models.example.com/health: HTTP 503",
    )
    history(model.health_key, 45)
    body = login(people.bob).get(URL).content.decode()
    row = body.split('<tr id="health-')[1].split("</tr>")[0]
    assert "acme:chat-1" in row
    assert "321 ms" in row and "HTTP 503" in row and "down" in row
    svg = body.split("<svg")[1].split("</svg>")[0]
    assert svg.count("<rect") == 30  # the newest 30 of 45
    assert "bar-down" in svg and "bar-up" in svg
    assert "Check now" not in body  # members may not probe
    # Models never checked say so.
    assert "no probes yet" in body


def test_the_history_is_one_query_for_all_models(
    people, login, make_model, django_assert_max_num_queries
):
    for index in range(20):
        model = make_model(people.org_a, f"acme:m{index:02d}")
        history(model.health_key, 35)
    client = login(people.alice)
    client.get(URL)
    with django_assert_max_num_queries(8):
        response = client.get(URL)
    assert response.content.decode().count("<svg") == 20


def test_check_now_probes_and_swaps_the_row(people, login, make_model, upstream):
    make_model(
        people.org_a,
        baseUrl=upstream.url + "/v1",
        healthCheck={"mode": "preflight", "path": "/health"},
    )
    response = login(people.alice).post(URL + "/check/acme:chat-1", headers=HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body
    assert re.match(r'\s*<tr id="health-[0-9a-f]{12}">', body)
    assert ">up<" in body and "ms" in body
    assert body.count("<rect") == 1
    status = HealthStatus.objects.get()
    assert status.is_available is True
    assert HealthCheckResult.objects.get().trigger == "manual"
    assert upstream.requests()[0]["path"] == "/health"


def test_check_now_without_javascript_redirects_with_the_result(
    people, login, make_model, upstream
):
    make_model(
        people.org_a,
        baseUrl=upstream.url + "/v1",
        healthCheck={"mode": "preflight", "path": "/health/503"},
    )
    client = login(people.alice)
    response = client.post(URL + "/check/acme:chat-1")
    assert response.status_code == 302 and response["Location"] == URL
    assert "acme:chat-1 is down" in client.get(URL).content.decode()


def test_check_now_for_an_unknown_or_foreign_model_is_404(people, login, make_model):
    make_model(people.org_b, "globex:chat")
    client = login(people.alice)
    assert client.post(URL + "/check/globex:chat").status_code == 404
    assert client.post(URL + "/check/cluster:chat-a").status_code == 404  # not granted
    assert not HealthCheckResult.objects.exists()


def test_upstream_error_text_is_escaped(people, login, make_model):
    model = make_model(people.org_a)
    HealthStatus.objects.create(
        target=model.health_key,
        is_available=False,
        checked_at=timezone.now(),
        error='<img src=x onerror=alert(1)> hx-get="/logout"',
    )
    history(model.health_key, 4, error="<script>alert(2)</script>")
    body = login(people.alice).get(URL).content.decode()
    assert "<img src=x" not in body and "<script>alert(2)" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
