"""Fixtures of the fault tests (imported by the test modules that use them): the stand-in
upstream, org models on it that gateway subprocesses can decrypt, a signed-in dashboard session
and a private Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import model_body
from tests.hardening.faults_servers import FIELD_KEY, SECRET_KEY, PrivateRedis
from tests.upstream_server import UpstreamServer


@pytest.fixture
def faults_upstream(settings: Any) -> Iterator[UpstreamServer]:
    """The stand-in provider; loopback is an allowed upstream network, and provider secrets are
    encrypted with the key the gateway subprocesses get."""
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.FIELD_ENCRYPTION_KEYS = [FIELD_KEY]
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def faults_model(world: Any, faults_upstream: UpstreamServer) -> Callable[..., str]:
    """`faults_model(upstream_model="chunks@1", **camelCase)`: a fresh org-A model on the
    stand-in upstream, without a model rpm unless given."""
    from registry.services import add_model

    def make(upstream_model: str = "chunks@1", **overrides: Any) -> str:
        model_id = f"acme:faults-{uuid.uuid4().hex[:10]}"
        fields = model_body(model_id, modelId=upstream_model, baseUrl=faults_upstream.url + "/v1")
        fields.pop("rpm")
        fields.update(overrides)
        add_model(world.org_a, fields, actor="test")
        return model_id

    return make


@pytest.fixture
def session_cookie(world: Any, settings: Any) -> str:
    """The session cookie of a dashboard user who is an admin of org A (signed with the secret
    key the gateway subprocesses get)."""
    from django.contrib.auth import get_user_model

    from orgs.models import Membership, Role
    from tests.hardening.faults_load import signed_in_session

    settings.SECRET_KEY = SECRET_KEY
    user = get_user_model().objects.create_user("faults-admin", "f@example.com", "x" * 20)
    Membership.objects.create(user=user, org=world.org_a, role=Role.ADMIN)
    return signed_in_session(user)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.close()
