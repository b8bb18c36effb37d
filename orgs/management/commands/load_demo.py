from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from orgs.models import Membership, Org, Role
from orgs.services import create_org, issue_api_key
from registry.cluster import get_cluster_registry
from registry.models import RegistryModel
from registry.services import add_model, put_grants

DEMO_MODEL = {
    "id": "demo:chat-small",
    "provider": "openai-compatible",
    "modelId": "chat-small",
    "displayName": "Demo chat (org model)",
    "apiFormat": "completions",
    "apiProviderType": "openai",
    "created": 1704067200,
    "baseUrl": "https://models.example.com/v1",
    "auth": {"type": "api-key", "envVar": "DEMO_MODEL_API_KEY"},
    "capabilities": {"modalities": {"input": ["text"], "output": ["text"]}, "reasoning": False},
    "contextWindow": 32768,
    "rpm": 60,
    "healthCheck": {"mode": "off"},
}


class Command(BaseCommand):
    help = (
        "Load demo data (idempotent): org-demo with grants and a model, org-globex, an admin "
        "user and API keys. Credentials are kept in var/demo_credentials.json and printed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(settings.VAR_DIR) / "demo_credentials.json"
        creds: dict[str, str] = {}
        if path.exists():
            creds = json.loads(path.read_text())
        with transaction.atomic():
            demo = Org.objects.filter(slug="org-demo").first() or create_org(
                "org-demo", "Demo Org", actor="demo"
            )
            if not Org.objects.filter(slug="org-globex").exists():
                create_org("org-globex", "Globex", actor="demo")
            users = get_user_model()
            user = users.objects.filter(username="admin").first()
            if user is None or "password" not in creds:
                creds["password"] = secrets.token_urlsafe(12)
                if user is None:
                    user = users.objects.create_superuser(
                        "admin", "admin@example.com", creds["password"]
                    )
                else:
                    user.set_password(creds["password"])
                    user.save()
            Membership.objects.get_or_create(user=user, org=demo, defaults={"role": Role.ADMIN})
            if "admin_key" not in creds:
                _, creds["admin_key"] = issue_api_key(
                    demo, role=Role.ADMIN, cluster_admin=True, name="demo admin", actor="demo"
                )
                _, creds["member_key"] = issue_api_key(
                    demo, role=Role.MEMBER, name="demo member", actor="demo"
                )
            put_grants(demo, sorted(get_cluster_registry().models), actor="demo")
            if (
                not RegistryModel.objects.for_org(demo)
                .filter(registry_id=DEMO_MODEL["id"])
                .exists()
            ):
                add_model(demo, DEMO_MODEL, actor="demo")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds, indent=2))
        os.chmod(path, 0o600)
        self.stdout.write(
            "\nDemo data ready (credentials kept in var/demo_credentials.json):\n"
            f"  dashboard  http://127.0.0.1:8000/   user: admin   password: {creds['password']}\n"
            f"  admin API key  (org-demo, admin, cluster admin): {creds['admin_key']}\n"
            f"  member API key (org-demo, member):               {creds['member_key']}\n"
        )
