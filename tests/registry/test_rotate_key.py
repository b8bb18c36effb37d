"""Rotating FIELD_ENCRYPTION_KEY (README "Secrets", issue 2 item 5): `rotate_encryption_key`
re-encrypts every stored provider secret (api-key values, custom header values, through
composites) under the first key of FIELD_ENCRYPTION_KEY, all or nothing.

    FIELD_ENCRYPTION_KEY=NEW,OLD  python manage.py rotate_encryption_key   # then drop OLD
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from registry.management.commands.rotate_encryption_key import Command
from registry.models import RegistryModel
from tests.conftest import SECRET, auth
from tests.upstream_server import UpstreamServer

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()  # in no setting: what "a lost key" looks like
HEADER_SECRET = "hdr-canary-7d41c0aa-rotate"
OTHER_SECRET = "sk-canary-globex-2e8f19b3-rotate"
ALL_SECRETS = (SECRET, HEADER_SECRET, OTHER_SECRET)

AUTHS: dict[str, dict[str, Any]] = {
    "acme:a-api-key": {"type": "api-key", "value": SECRET, "headerName": "x-api-key"},
    "acme:b-headers": {
        "type": "custom-headers",
        "headers": {"X-Org-Token": HEADER_SECRET, "X-Tenant": "acme"},
        "envVars": {"X-Env-Token": "ROTATE_TEST_UNUSED_ENV"},
    },
    "acme:c-composite": {
        "type": "composite",
        "strategies": [
            {"type": "api-key", "value": SECRET},
            {"type": "custom-headers", "headers": {"X-Org-Token": HEADER_SECRET}},
        ],
    },
}


@pytest.fixture
def upstream(settings: Any) -> Iterator[UpstreamServer]:
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def stored(world: Any, make_model: Any, settings: Any, upstream: UpstreamServer) -> dict[str, Any]:
    """Org A's three models and one of org B, their secrets encrypted under key A only."""
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    base = {"baseUrl": upstream.url + "/v1", "modelId": "chunks@2"}
    for model_id, strategy in AUTHS.items():
        make_model(world.org_a, model_id, auth=strategy, **base)
    other = {"type": "api-key", "value": OTHER_SECRET}
    make_model(world.org_b, "globex:chat", auth=other, **base)
    return {**AUTHS, "globex:chat": other}


def ciphertexts() -> dict[str, str]:
    return dict(RegistryModel.objects.values_list("registry_id", "auth_ciphertext"))


def decrypted(token: str, key: str) -> dict[str, Any]:
    return json.loads(Fernet(key.encode()).decrypt(token.encode()))


def rotate() -> str:
    out = StringIO()
    call_command("rotate_encryption_key", stdout=out)
    return out.getvalue()


def test_rotation_moves_every_secret_to_the_new_key(
    stored: dict[str, Any], settings: Any, http: Any, world: Any, upstream: UpstreamServer
):
    before = ciphertexts()
    assert sorted(before) == sorted(stored)
    for model_id, token in before.items():
        assert decrypted(token, KEY_A) == stored[model_id]
        assert not any(secret in token for secret in ALL_SECRETS)

    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]  # new first, old after (README)
    assert rotate().strip() == "re-encrypted the secrets of 4 model(s) with the primary key"

    after = ciphertexts()
    assert sorted(after) == sorted(before)
    for model_id, token in after.items():
        assert token != before[model_id], model_id
        assert decrypted(token, KEY_B) == stored[model_id]  # same secrets under B
        with pytest.raises(InvalidToken):
            Fernet(KEY_A.encode()).decrypt(token.encode())  # A alone no longer opens them

    # With only the old key configured, nothing can be read any more.
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        RegistryModel.objects.get(registry_id="acme:a-api-key").get_auth()

    # With only the new key, the registry and the gateway work as before.
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B]
    for model in RegistryModel.objects.all():
        assert model.get_auth() == stored[model.registry_id]

    response = http.post(
        "/api/v1/llm/chat/completions",
        json={"model": "acme:c-composite", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(world.bob),
    )
    assert response.status_code == 200, response.text
    sent = [r for r in upstream.requests() if r["path"].endswith("/chat/completions")][-1]
    assert sent["headers"]["authorization"] == f"Bearer {SECRET}"
    assert sent["headers"]["x-org-token"] == HEADER_SECRET

    url = "/api/v1/llm/models/registry/acme:b-headers"
    response = http.patch(url, json={"displayName": "Rotated"}, headers=auth(world.alice))
    assert response.status_code == 200, response.text
    assert response.json()["definition"]["auth"]["headers"] == {
        "X-Org-Token": "********",
        "X-Tenant": "********",
    }
    assert not any(secret in response.text for secret in ALL_SECRETS)
    # The PATCH kept the stored secrets (it had to decrypt them under B to do so).
    patched = RegistryModel.objects.get(registry_id="acme:b-headers")
    assert decrypted(patched.auth_ciphertext, KEY_B) == stored["acme:b-headers"]


def test_rotation_with_nothing_stored_is_a_no_op(db: Any, settings: Any):
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    assert rotate().strip() == "re-encrypted the secrets of 0 model(s) with the primary key"


def test_an_undecryptable_row_stops_the_rotation_and_changes_nothing(
    stored: dict[str, Any], settings: Any, capsys: pytest.CaptureFixture[str]
):
    # The middle model (by id and by primary key) was encrypted under a key nobody has any more;
    # the one before it is re-encrypted first, so "nothing changed" proves the roll-back.
    lost = Fernet(KEY_C.encode()).encrypt(json.dumps(stored["acme:b-headers"]).encode()).decode()
    RegistryModel.objects.filter(registry_id="acme:b-headers").update(auth_ciphertext=lost)
    before = ciphertexts()
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]

    with pytest.raises(CommandError) as info:
        rotate()
    message = str(info.value)
    assert message.startswith("nothing was changed"), message
    assert "acme:b-headers (org-acme)" in message
    assert "acme:a-api-key" not in message and "acme:c-composite" not in message
    assert not any(secret in message for secret in ALL_SECRETS)
    assert ciphertexts() == before

    # What an operator sees from manage.py: one line, exit status 1, no traceback.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(["manage.py", "rotate_encryption_key"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.strip().splitlines() == [f"CommandError: {message}"]
    assert ciphertexts() == before
    for model_id, token in before.items():
        if model_id != "acme:b-headers":
            assert decrypted(token, KEY_A) == stored[model_id]

    # Once the lost key is configured again, the rotation goes through for every row.
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A, KEY_C]
    assert "4 model(s)" in rotate()
    for model_id, token in ciphertexts().items():
        assert decrypted(token, KEY_B) == stored[model_id]
