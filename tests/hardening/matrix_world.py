"""Two tenants with one of every object, for the tenancy matrix (RELIABILITY.md A4, A11; G2).

Org A (`org-acme`) owns a model, a cluster grant, an auto override, keys, members, an input file
and a finished batch with its output and error files; org B (`org-globex`) owns a model and a
grant. Private markers (a display name, a file name, line ids, batch metadata, a key name) are
strings that only org A's objects carry: a response to anyone else must never contain them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models

from batches import runner
from batches import services as batch_services
from batches.models import Batch, BatchItem, File
from dashboard.views.access import OrgAccess
from dashboard.views.playground import store_pending
from orgs import generation, hotcache
from orgs.auth import Caller
from orgs.models import ApiKey, AuditEvent, Membership, Org, Role
from orgs.services import create_org, issue_api_key, revoke_api_key
from registry.models import (
    AutoModel,
    ClusterGrant,
    HealthCheckResult,
    HealthStatus,
    ModelAlias,
    RegistryModel,
)
from registry.services import add_model, put_grants, set_auto_model
from tests.conftest import SECRET, model_body
from tests.registry.snapshot import Snapshot, snapshot_diff, tables_snapshot

A_MODEL = "acme:chat-1"
MARKERS = (
    "Acme Private Display",  # org A's model's display name
    "acme-private-input.jsonl",  # org A's input file name
    "acme-private-line",  # custom_id prefix of org A's batch lines (in its output/error files)
    "acme-private-meta",  # org A's batch metadata
    "acme-private-key",  # the name of org A's spare key
    SECRET,
)


@dataclass
class Tenants:
    org_a: Org
    org_b: Org
    tokens: dict[str, str]  # principal -> raw API key
    users: dict[str, Any]  # principal -> dashboard user
    spare_key: int  # an org A key id for the key pages
    input: str
    output: str
    error: str
    batch: str
    model: str = A_MODEL
    extra: dict[str, Any] = field(default_factory=dict)

    def playground_token(self) -> str:
        """A fresh pending playground answer of org A's admin user."""
        user = self.users["a_session"]
        access = OrgAccess(self.org_a, Role.ADMIN, Caller.for_user(user, self.org_a, Role.ADMIN))
        body = {"model": A_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        return store_pending(access, user, body, "a")

    def values(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "batch": self.batch,
            "key": self.spare_key,
        }


def _user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create(username=username, **extra)


def build(upstream_url: str) -> Tenants:
    org_a = create_org("org-acme", "Acme")
    org_b = create_org("org-globex", "Globex")
    keys = {
        "a_member_key": issue_api_key(org_a, role=Role.MEMBER, name="bob")[1],
        "a_admin_key": issue_api_key(org_a, role=Role.ADMIN, name="alice")[1],
        "cluster_admin": issue_api_key(org_a, role=Role.ADMIN, cluster_admin=True, name="c")[1],
        "b_admin_key": issue_api_key(org_b, role=Role.ADMIN, name="dave")[1],
    }
    revoked, keys["revoked_key"] = issue_api_key(org_a, role=Role.ADMIN, name="revoked")
    revoke_api_key(revoked)
    spare, _ = issue_api_key(org_a, role=Role.MEMBER, name="acme-private-key")
    users = {
        "a_session": _user("alice"),
        "a_member_session": _user("bob"),
        "b_session": _user("dave"),
        "cluster_admin": _user("root", is_superuser=True, is_staff=True),
    }
    Membership.objects.create(user=users["a_session"], org=org_a, role=Role.ADMIN)
    Membership.objects.create(user=users["a_member_session"], org=org_a, role=Role.MEMBER)
    Membership.objects.create(user=users["b_session"], org=org_b, role=Role.ADMIN)

    body = model_body(
        A_MODEL, baseUrl=upstream_url + "/v1", modelId="chunks@2", displayName=MARKERS[0]
    )
    body.pop("rpm")
    add_model(org_a, body, actor="setup")
    add_model(org_b, model_body("globex:chat-1", baseUrl=None), actor="setup")
    put_grants(org_a, ["cluster:chat-a"], actor="setup")
    put_grants(org_b, ["cluster:embed"], actor="setup")
    set_auto_model(org_a, "completions", {"modelId": A_MODEL}, actor="setup")

    alice = ApiKey.objects.get(org=org_a, name="alice")
    caller = Caller.for_key(alice)
    lines = [
        {"custom_id": "acme-private-line-ok", "model": A_MODEL},
        {"custom_id": "acme-private-line-bad", "model": "acme:missing"},
    ]
    content = b"".join(
        json.dumps(
            {
                "custom_id": line["custom_id"],
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": line["model"], "messages": [{"role": "user", "content": "x"}]},
            }
        ).encode()
        + b"\n"
        for line in lines
    )
    upload = SimpleUploadedFile(MARKERS[1], content, content_type="application/jsonl")
    input_file = batch_services.create_file(caller, upload, "batch")
    batch = batch_services.create_batch(
        caller,
        {
            "input_file_id": input_file.public_id,
            "endpoint": "/v1/chat/completions",
            "metadata": {"owner": MARKERS[3]},
        },
    )
    runner.run_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.status == "completed", (batch.status, batch.errors)
    assert batch.output_file is not None and batch.error_file is not None
    return Tenants(
        org_a=org_a,
        org_b=org_b,
        tokens=keys,
        users=users,
        spare_key=spare.pk,
        input=input_file.public_id,
        output=batch.output_file.public_id,
        error=batch.error_file.public_id,
        batch=batch.public_id,
    )


def wipe() -> None:
    """Remove every row `build` made (and what the matrix's allowed writes added)."""
    Org.objects.all().delete()
    get_user_model().objects.all().delete()
    AuditEvent.objects.all().delete()
    cache.clear()
    hotcache.clear()
    generation.bump()


# --------------------------------------------------------------------------------------------
# Snapshots: every row of every table a request could touch, plus the stored blobs

TABLES: tuple[type[models.Model], ...] = (
    Org,
    Membership,
    get_user_model(),
    ApiKey,
    RegistryModel,
    ModelAlias,
    ClusterGrant,
    AutoModel,
    HealthStatus,
    HealthCheckResult,
    AuditEvent,
    File,
    Batch,
    BatchItem,
)


def snapshot(org: Org | None = None) -> Snapshot:
    """All rows (only `org`'s when given), and the stored blobs when not scoped."""
    out = tables_snapshot(TABLES, org)
    if org is None:
        root = Path(settings.MEDIA_ROOT)
        blobs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        out["blobs"] = [(b,) for b in blobs]
    return out


def diff(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    return snapshot_diff(before, after, limit=3)
