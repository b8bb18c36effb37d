"""Server time of every dashboard page with 1,000 models, 100 orgs and 10,000 usage records.

    .venv/bin/python benchmarks/dashboard.py [--repeat 20]

Builds a throwaway SQLite database (or uses DATABASE_URL as is), fills it, signs in as a
superuser with Django's test client (in process: the time is the server's, without a network),
and prints the median and worst time and the query count of each page, against the 100 ms target.
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MS = 100.0


def setup_environment() -> tempfile.TemporaryDirectory[str]:
    tmp = tempfile.TemporaryDirectory(prefix="dashboard-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ["VAR_DIR"] = tmp.name
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    return tmp


def fill(n_models: int, n_orgs: int, n_usage: int) -> tuple[str, str]:
    """Create the data set; return (superuser name, password) and the busiest org's slug."""
    import random
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from gateway.models import UsageRecord
    from orgs.models import ApiKey, AuditEvent, Membership, Role
    from orgs.services import create_org, issue_api_key
    from registry.cluster import get_cluster_registry
    from registry.models import RegistryModel
    from registry.services import add_model, put_grants

    orgs = [create_org(f"org-{i:03d}", f"Org {i}", actor="bench") for i in range(n_orgs)]
    main = orgs[0]
    put_grants(main, sorted(get_cluster_registry().models), actor="bench")
    template = add_model(
        main,
        {
            "id": "bench:model-0000",
            "provider": "openai-compatible",
            "modelId": "m",
            "apiFormat": "completions",
            "apiProviderType": "openai",
            "created": 1704067200,
            "auth": {"type": "api-key", "value": "sk-bench-secret"},
            "capabilities": {
                "modalities": {"input": ["text"], "output": ["text"]},
                "reasoning": False,
            },
            "baseUrl": "https://models.example.com/v1",
            "contextWindow": 8192,
            "rpm": 60,
            "healthCheck": {"mode": "periodic", "intervalSeconds": 60, "path": "/health"},
        },
        actor="bench",
    )
    rows = []
    for i in range(1, n_models):
        model_id = f"bench:model-{i:04d}"
        rows.append(
            RegistryModel(
                org=main,
                registry_id=model_id,
                provider=template.provider,
                upstream_model=template.upstream_model,
                api_format=template.api_format,
                base_url=template.base_url,
                context_window=template.context_window,
                rpm=template.rpm,
                definition={**template.definition, "id": model_id},
                auth_ciphertext=template.auth_ciphertext,
            )
        )
    RegistryModel.objects.bulk_create(rows, batch_size=500)
    keys = [
        issue_api_key(main, role=Role.MEMBER, name=f"key {i}", actor="bench")[0] for i in range(5)
    ]
    now = timezone.now()
    model_ids = [f"bench:model-{i:04d}" for i in range(20)]
    records = [
        UsageRecord(
            org=main,
            api_key=random.choice(keys),
            end_user=random.choice(["", "user-1", "user-2", "user-3"]),
            endpoint="chat.completions",
            requested_model="auto",
            model_id=random.choice(model_ids),
            status_code=random.choice([200] * 19 + [502]),
            prompt_tokens=random.randint(5, 500),
            completion_tokens=random.randint(5, 500),
            total_tokens=0,
            latency_ms=random.randint(50, 2000),
            created_at=now - timedelta(minutes=random.randint(0, 60 * 24 * 29)),
        )
        for _ in range(n_usage)
    ]
    UsageRecord.objects.bulk_create(records, batch_size=1000)
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                org=main, org_slug=main.slug, actor="bench", action="model.updated", target=f"m{i}"
            )
            for i in range(2000)
        ],
        batch_size=1000,
    )
    user = get_user_model().objects.create_superuser(
        "bench", "bench@example.com", "bench-password-1"
    )
    Membership.objects.create(user=user, org=main, role=Role.ADMIN)
    assert ApiKey.objects.filter(org=main).count() == 5
    return user.username, main.slug


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--orgs", type=int, default=100)
    parser.add_argument("--usage", type=int, default=10_000)
    args = parser.parse_args()

    tmp = setup_environment()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    t0 = time.perf_counter()
    call_command("migrate", verbosity=0)
    username, slug = fill(args.models, args.orgs, args.usage)
    print(
        f"database: {connection.vendor}; {args.models} models, {args.orgs} orgs, "
        f"{args.usage} usage records; setup {time.perf_counter() - t0:.1f} s"
    )
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    pages = [
        ("models", f"/orgs/{slug}/models"),
        ("models (search)", f"/orgs/{slug}/models?q=model-09"),
        ("model form (edit)", f"/orgs/{slug}/models/edit/bench:model-0000"),
        ("grants", "/grants"),
        ("auto models", f"/orgs/{slug}/auto"),
        ("health", f"/orgs/{slug}/health"),
        ("API keys", f"/orgs/{slug}/keys"),
        ("playground", f"/orgs/{slug}/playground"),
        ("usage (24 h)", f"/orgs/{slug}/usage?period=24h"),
        ("usage (30 d)", f"/orgs/{slug}/usage?period=30d"),
        ("activity", f"/orgs/{slug}/activity"),
        ("batches", f"/orgs/{slug}/batches"),
        ("files", f"/orgs/{slug}/files"),
    ]
    print(f"\n{'page':<22}{'status':>7}{'median ms':>11}{'worst ms':>10}{'queries':>9}  target")
    failed = 0
    for name, url in pages:
        times = []
        status = 0
        queries = 0
        for i in range(args.repeat + 1):
            with CaptureQueriesContext(connection) as captured:
                start = time.perf_counter()
                response = client.get(url)
                elapsed = (time.perf_counter() - start) * 1000
            status = response.status_code
            if i:  # the first request warms caches (templates, URL resolver)
                times.append(elapsed)
                queries = len(captured)
        median, worst = statistics.median(times), max(times)
        ok = status == 200 and median <= TARGET_MS
        failed += not ok
        print(
            f"{name:<22}{status:>7}{median:>11.1f}{worst:>10.1f}{queries:>9}  "
            f"{'PASS' if ok else 'FAIL'} (median <= {TARGET_MS:.0f} ms)"
        )
    print(f"\n{len(pages) - failed}/{len(pages)} pages within {TARGET_MS:.0f} ms")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
