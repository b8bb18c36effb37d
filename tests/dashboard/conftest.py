"""Personas and factories for the dashboard pages.

Org A (`org-acme`) has an admin user (alice) and a member user (bob); org B (`org-globex`) has
dave. `root` is a superuser: a cluster admin and an admin of every org. Models are created through
the registry services, with a canary provider secret that no page may ever show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from orgs.models import Membership, Org, Role
from orgs.services import create_org
from registry.models import RegistryModel
from registry.services import add_model, put_grants
from tests.conftest import model_body

CANARY = "sk-canary-dash-0f3e9a71-provider-secret"
HEADER_CANARY = "hdr-canary-4b1d-secret-value"
PASSWORD = "correct horse battery staple 42"


@dataclass
class People:
    org_a: Org
    org_b: Org
    root: Any  # superuser
    alice: Any  # org A admin
    bob: Any  # org A member
    dave: Any  # org B admin
    nobody: Any  # signed in, no org


def _user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(
        username, f"{username}@example.com", PASSWORD, **extra
    )


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people(db: Any) -> People:
    org_a = create_org("org-acme", "Acme")
    org_b = create_org("org-globex", "Globex")
    root = _user("root", is_superuser=True, is_staff=True)
    alice, bob, dave, nobody = _user("alice"), _user("bob"), _user("dave"), _user("nobody")
    Membership.objects.create(user=alice, org=org_a, role=Role.ADMIN)
    Membership.objects.create(user=bob, org=org_a, role=Role.MEMBER)
    Membership.objects.create(user=dave, org=org_b, role=Role.ADMIN)
    return People(org_a, org_b, root, alice, bob, dave, nobody)


@pytest.fixture
def login() -> Callable[..., Client]:
    """`login(user)`: a test client signed in as `user` (or anonymous for None)."""

    def make(user: Any = None, **kwargs: Any) -> Client:
        client = Client(**kwargs)
        if user is not None:
            client.force_login(user)
        return client

    return make


def definition(model_id: str = "acme:chat-1", **overrides: Any) -> dict[str, Any]:
    """A valid definition with this folder's canary secret and a display name."""
    defaults = {"auth": {"type": "api-key", "value": CANARY}, "displayName": "Chat one"}
    return model_body(model_id, **{**defaults, **overrides})


@pytest.fixture
def make_model() -> Callable[..., RegistryModel]:
    def make(org: Org, model_id: str = "acme:chat-1", **overrides: Any) -> RegistryModel:
        return add_model(org, definition(model_id, **overrides), actor="test")

    return make


@pytest.fixture
def granted(people: People) -> list[str]:
    """Org A is granted two cluster models (cluster:chat-a and cluster:embed)."""
    return put_grants(people.org_a, ["cluster:chat-a", "cluster:embed"], actor="test")


def form_data(**overrides: Any) -> dict[str, Any]:
    """A valid POST of the model form (create)."""
    data: dict[str, Any] = {
        "id": "acme:new-model",
        "display_name": "New model",
        "provider": "openai-compatible",
        "model_id": "new-model",
        "api_format": "completions",
        "api_provider_type": "openai",
        "created": "1704067200",
        "base_url": "https://models.example.com/v1",
        "context_window": "16384",
        "rpm": "30",
        "auth_type": "api-key",
        "auth_value": CANARY,
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "supports_temperature": "unknown",
        "supports_top_p": "unknown",
        "supports_video_url": "unknown",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


HTMX = {"HX-Request": "true"}
