from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from orgs.models import ApiKey, AuditEvent, Org, hash_key


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_it_creates_an_org_and_a_key_printed_once_and_stored_hashed(db):
    run("create_org", "org-acme", "--name", "Acme")
    output = run("create_api_key", "org-acme", "--role", "admin", "--cluster-admin", "--name", "ci")
    raw = output.strip().splitlines()[-1]
    assert raw.startswith("mk_") and " " not in raw
    key = ApiKey.objects.get()
    assert key.org == Org.objects.get(slug="org-acme")
    assert key.role == "admin" and key.cluster_admin and key.name == "ci"
    assert key.key_hash == hash_key(raw)
    assert raw not in str(list(ApiKey.objects.values()))
    assert raw[: len(key.prefix)] == key.prefix
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert sorted(actions) == ["key.issued", "org.created"]
    assert raw not in str(list(AuditEvent.objects.values()))


def test_it_refuses_a_duplicate_or_malformed_org(db):
    run("create_org", "org-acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_org", "org-acme")
    with pytest.raises(CommandError, match="lowercase"):
        run("create_org", "Not A Slug")


def test_it_refuses_a_key_for_an_unknown_org(db):
    with pytest.raises(CommandError, match="not found"):
        run("create_api_key", "org-missing")


def test_it_revokes_by_raw_key_and_by_prefix(db):
    run("create_org", "org-acme")
    raw1 = run("create_api_key", "org-acme").strip().splitlines()[-1]
    raw2 = run("create_api_key", "org-acme").strip().splitlines()[-1]
    run("revoke_api_key", raw1)
    run("revoke_api_key", raw2[:12])
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 0
    assert AuditEvent.objects.filter(action="key.revoked").count() == 2
    with pytest.raises(CommandError, match="no API key"):
        run("revoke_api_key", "mk_unknown_key_value")


def test_load_demo_is_idempotent(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = run("load_demo")
    second = run("load_demo")
    assert "password" in first
    assert first.splitlines()[-3:] == second.splitlines()[-3:]
    assert Org.objects.filter(slug="org-demo").exists()
    assert ApiKey.objects.count() == 2
