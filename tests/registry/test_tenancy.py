"""Tenancy and authorization matrix over every registry route (api-contract.md §3 ops 1–14, §2.2,
§1.3; RELIABILITY.md (b) A1–A14).

Each cell sends one request with the raw `http` client (or exact bytes, for headers httpx refuses)
and checks the status, the §2.2 error shape, that a refused request changed no row, that a 401
never echoes the token and that org B's allowed calls never touch org A's rows.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest

from registry import services
from registry.models import AutoModel, ClusterGrant, RegistryModel
from tests.conftest import SECRET, auth, model_body
from tests.registry.apicheck import assert_error, media_type
from tests.registry.rawhttp import raw_request
from tests.registry.snapshot import assert_unchanged, db_snapshot

API = "/api/v1/llm"
A_MODEL = "acme:chat-1"
B_MODEL = "globex:chat-1"


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str
    scope: str  # "key", "admin" or "cluster" (§3 Scope column)
    org_b: int  # the status dave (org B admin, not cluster admin) gets when the scope lets him in
    body: dict[str, Any] | None = None


OPS = [
    Op("list_models", "GET", "/models", "key", 200),
    Op("get_model", "GET", f"/models/{A_MODEL}", "key", 404),
    Op("list_registry", "GET", "/models/registry", "admin", 200),
    Op(
        "add_registry",
        "POST",
        "/models/registry",
        "admin",
        200,
        body=model_body("acme:new-model", baseUrl=None),
    ),
    Op("get_registry", "GET", f"/models/registry/{A_MODEL}", "admin", 404),
    Op(
        "update_registry",
        "PATCH",
        f"/models/registry/{A_MODEL}",
        "admin",
        404,
        body={"displayName": "Renamed"},
    ),
    Op("remove_registry", "DELETE", f"/models/registry/{A_MODEL}", "admin", 404),
    Op("check_health", "POST", f"/models/registry/{A_MODEL}/health", "admin", 404),
    Op("list_cluster_registry", "GET", "/models/cluster_registry", "cluster", 403),
    Op("list_grants", "GET", "/models/cluster_registry/orgs/org-acme/grants", "cluster", 403),
    Op(
        "put_grants",
        "PUT",
        "/models/cluster_registry/orgs/org-acme/grants",
        "cluster",
        403,
        body={"modelIds": ["cluster:chat-b", "cluster:embed"]},
    ),
    Op("list_auto", "GET", "/models/auto", "admin", 200),
    # §6.4: a target the org cannot resolve is 400 "model not available to this org".
    Op("put_auto", "PUT", "/models/auto/completions", "admin", 400, body={"modelId": A_MODEL}),
    Op("delete_auto", "DELETE", "/models/auto/completions", "admin", 200),
]
OPS_BY_NAME = {op.name: op for op in OPS}

PERSONAS = ("bob", "alice", "carol", "dave")
# Credentials that must all be 401: name -> how to build the Authorization header (None: omitted).
BAD_CREDENTIALS = (
    "no-key",
    "basic-scheme",
    "basic-with-valid-token",
    "bearer-no-token",
    "bearer-trailing-space",
    "token-with-space",
    "token-with-tab",
    "unknown-key",
    "revoked-key",
)
PRINCIPALS = BAD_CREDENTIALS + PERSONAS


def authorization_for(world: Any, principal: str) -> str | bytes | None:
    token = world.alice.token
    return {
        "no-key": None,
        "basic-scheme": "Basic x",
        "basic-with-valid-token": f"Basic {token}",
        "bearer-no-token": "Bearer",
        "bearer-trailing-space": "Bearer ",
        "token-with-space": f"Bearer {token[:12]} {token[12:]}",
        "token-with-tab": f"Bearer {token[:12]}\t{token[12:]}",
        "unknown-key": "Bearer mk_" + secrets.token_urlsafe(32),
        "revoked-key": f"Bearer {world.revoked.token}",
    }.get(principal) or (
        auth(getattr(world, principal))["Authorization"] if principal in PERSONAS else None
    )


def expected_status(op: Op, principal: str) -> int:
    if principal in BAD_CREDENTIALS:
        return 401
    if op.scope == "cluster":
        return 200 if principal == "carol" else 403
    if op.scope == "admin" and principal == "bob":
        return 403
    if principal == "dave":
        return op.org_b
    return 200


@dataclass
class Reply:
    """The parts of a response the matrix looks at, from httpx or from a raw socket."""

    status_code: int
    headers: Any
    text: str
    body_json: Any

    def json(self) -> Any:
        if self.body_json is None:
            raise ValueError("not JSON")
        return self.body_json


def send(
    http: Any,
    live_url: str,
    op: Op,
    authorization: str | bytes | None,
    extra_headers: dict[str, Any] | None = None,
) -> Reply:
    headers: dict[str, Any] = dict(extra_headers or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    content = None
    if op.body is not None:
        headers["Content-Type"] = "application/json"
        content = json.dumps(op.body).encode()
    # h11 (httpx) refuses header values with trailing whitespace: send those as raw bytes.
    needs_raw = any(v != v.rstrip() for v in headers.values())
    if needs_raw:
        raw = raw_request(
            live_url, op.method, API + op.path, headers=list(headers.items()), body=content or b""
        )
        try:
            parsed = raw.json()
        except ValueError:
            parsed = None
        return Reply(raw.status, raw.headers, raw.text, parsed)
    response = http.request(op.method, API + op.path, headers=headers, content=content)
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    return Reply(response.status_code, response.headers, response.text, parsed)


@pytest.fixture
def tenants(world: Any, make_model: Any) -> Any:
    """Org A: an own model, a cluster grant and an auto override; org B: its own model and grant."""
    make_model(world.org_a, A_MODEL, baseUrl=None, aliases=["acme-alias"])
    make_model(world.org_b, B_MODEL, baseUrl=None)
    services.put_grants(world.org_a, ["cluster:chat-a"], actor="setup")
    services.put_grants(world.org_b, ["cluster:embed"], actor="setup")
    services.set_auto_model(world.org_a, "completions", {"modelId": A_MODEL}, actor="setup")
    return world


def credential_fragments(authorization: str | bytes | None) -> list[str]:
    """The pieces of a sent credential that a 401 body must not echo."""
    if authorization is None:
        return []
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    _, _, rest = text.partition(" ")
    pieces = [p for p in rest.split() if len(p) >= 8]
    joined = "".join(rest.split())
    return [*pieces, joined] if len(joined) >= 8 else pieces


def assert_no_credential_echo(reply: Reply, authorization: str | bytes | None) -> None:
    for piece in credential_fragments(authorization):
        assert piece not in reply.text, "the 401 body echoes the sent token"
        assert hashlib.sha256(piece.encode()).hexdigest() not in reply.text
    assert "orgs_apikey" not in reply.text and "key_hash" not in reply.text


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_matrix(tenants: Any, http: Any, live_url: str, op: Op, principal: str) -> None:
    world = tenants
    authorization = authorization_for(world, principal)
    expected = expected_status(op, principal)
    before_all = db_snapshot()
    before_a = db_snapshot(org=world.org_a)

    reply = send(http, live_url, op, authorization)

    assert reply.status_code == expected, (
        f"{op.method} {op.path} as {principal}: expected {expected}, got {reply.status_code}: "
        f"{reply.text[:300]}"
    )
    assert SECRET not in reply.text and "sk-canary-cluster-secret" not in reply.text
    if expected == 200:
        assert media_type(reply.headers.get("content-type")) == "application/json"
        if principal == "dave":  # org B's allowed calls leave every org A row as it was
            assert_unchanged(before_a, org=world.org_a)
        return
    assert_error(reply, expected)
    if expected == 401:
        assert_no_credential_echo(reply, authorization)
    assert_unchanged(before_all)


def test_snapshot_sees_an_allowed_write(tenants: Any, http: Any) -> None:
    """The control for the matrix: the snapshot is not blind to the writes it should catch."""
    world = tenants
    before = db_snapshot()
    response = http.patch(
        f"{API}/models/registry/{A_MODEL}", headers=auth(world.alice), json={"displayName": "New"}
    )
    assert response.status_code == 200, response.text
    with pytest.raises(AssertionError, match="RegistryModel"):
        assert_unchanged(before)


def test_org_b_error_for_foreign_auto_target_is_no_oracle(tenants: Any, http: Any) -> None:
    """PUT auto with org A's model id gives org B the same answer as an id that exists nowhere."""
    world = tenants
    url = f"{API}/models/auto/completions"
    foreign = http.put(url, headers=auth(world.dave), json={"modelId": A_MODEL})
    missing = http.put(url, headers=auth(world.dave), json={"modelId": "acme:chat-9"})
    foreign_error = assert_error(foreign, 400)
    missing_error = assert_error(missing, 400)
    assert foreign_error["message"].replace(A_MODEL, "X") == missing_error["message"].replace(
        "acme:chat-9", "X"
    )
    assert foreign_error["param"] == missing_error["param"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/models/{A_MODEL}"),
        ("GET", f"/models/registry/{A_MODEL}"),
        ("PATCH", f"/models/registry/{A_MODEL}"),
        ("DELETE", f"/models/registry/{A_MODEL}"),
        ("POST", f"/models/registry/{A_MODEL}/health"),
        ("GET", "/models/acme-alias"),
    ],
)
def test_org_b_gets_the_same_404_as_for_a_missing_id(
    tenants: Any, http: Any, method: str, path: str
) -> None:
    """No existence oracle (A4): org A's id and a never-used id look identical to org B."""
    world = tenants
    body = {"displayName": "x"} if method == "PATCH" else None
    missing_path = path.replace(A_MODEL, "acme:never-was").replace("acme-alias", "acme-never")
    foreign = http.request(method, API + path, headers=auth(world.dave), json=body)
    missing = http.request(method, API + missing_path, headers=auth(world.dave), json=body)
    foreign_error = assert_error(foreign, 404)
    missing_error = assert_error(missing, 404)
    normalise = {A_MODEL: "X", "acme:never-was": "X", "acme-alias": "X", "acme-never": "X"}
    a, b = foreign_error["message"], missing_error["message"]
    for old, new in normalise.items():
        a, b = a.replace(old, new), b.replace(old, new)
    assert a == b
    assert foreign_error["param"] == missing_error["param"]


def test_lowercase_bearer_scheme_is_accepted(tenants: Any, http: Any) -> None:
    """§1.2: the SDK sends a token that already starts with "bearer " (any case) as is."""
    response = http.get(f"{API}/models", headers={"Authorization": f"bearer {tenants.alice.token}"})
    assert response.status_code == 200, response.text


def test_revoked_key_is_refused_on_the_very_next_request(tenants: Any, http: Any) -> None:
    """A3: revoke, then the next request is 401 (no auth cache)."""
    from orgs.services import revoke_api_key

    world = tenants
    assert http.get(f"{API}/models", headers=auth(world.bob)).status_code == 200
    revoke_api_key(world.bob.key)
    assert_error(http.get(f"{API}/models", headers=auth(world.bob)), 401)


# --- lists show only the caller's org (A5) ------------------------------------------------------


def test_org_b_lists_never_show_org_a_rows(tenants: Any, http: Any) -> None:
    world = tenants
    models = http.get(f"{API}/models", headers=auth(world.dave)).json()
    assert [m["id"] for m in models["data"]] == ["cluster:embed", B_MODEL]
    assert all(m["owned_by"] != "org-acme" for m in models["data"])

    registry = http.get(f"{API}/models/registry", headers=auth(world.dave)).json()
    assert [m["id"] for m in registry["data"]] == ["cluster:embed", B_MODEL]

    autos = http.get(f"{API}/models/auto", headers=auth(world.dave)).json()
    assert autos["data"] == []

    # And org A sees its own rows only.
    models_a = http.get(f"{API}/models", headers=auth(world.alice)).json()
    assert [m["id"] for m in models_a["data"]] == [A_MODEL, "cluster:chat-a"]
    autos_a = http.get(f"{API}/models/auto", headers=auth(world.alice)).json()
    assert [(a["endpoint"], a["model_id"]) for a in autos_a["data"]] == [("completions", A_MODEL)]


def test_grants_are_listed_per_org(tenants: Any, http: Any) -> None:
    world = tenants
    a = http.get(f"{API}/models/cluster_registry/orgs/org-acme/grants", headers=auth(world.carol))
    b = http.get(f"{API}/models/cluster_registry/orgs/org-globex/grants", headers=auth(world.carol))
    assert [(g["org_id"], g["model_id"]) for g in a.json()["data"]] == [
        ("org-acme", "cluster:chat-a")
    ]
    assert [(g["org_id"], g["model_id"]) for g in b.json()["data"]] == [
        ("org-globex", "cluster:embed")
    ]


def test_unknown_org_grants_are_404(tenants: Any, http: Any) -> None:
    world = tenants
    before = db_snapshot()
    for method, body in (("GET", None), ("PUT", {"modelIds": ["cluster:chat-a"]})):
        response = http.request(
            method,
            f"{API}/models/cluster_registry/orgs/org-nope/grants",
            headers=auth(world.carol),
            json=body,
        )
        assert_error(response, 404)
    assert_unchanged(before)


def test_org_b_cannot_reach_a_cluster_model_granted_only_to_org_a(tenants: Any, http: Any) -> None:
    world = tenants
    before = db_snapshot()
    for name in ("cluster:chat-a", "chat-a"):  # id and YAML alias
        assert_error(http.get(f"{API}/models/{name}", headers=auth(world.dave)), 404)
        response = http.put(
            f"{API}/models/auto/completions", headers=auth(world.dave), json={"modelId": name}
        )
        assert_error(response, 400)
    assert_error(http.get(f"{API}/models/registry/cluster:chat-a", headers=auth(world.dave)), 404)
    assert_unchanged(before)


# --- A8: the same id in two orgs ----------------------------------------------------------------


def test_same_id_in_two_orgs_each_org_resolves_its_own(tenants: Any, http: Any) -> None:
    world = tenants
    body = model_body(A_MODEL, provider="globex-provider", modelId="globex-upstream", baseUrl=None)
    added = http.post(f"{API}/models/registry", headers=auth(world.dave), json=body)
    assert added.status_code == 200, added.text
    assert RegistryModel.objects.filter(registry_id=A_MODEL).count() == 2

    a = http.get(f"{API}/models/registry/{A_MODEL}", headers=auth(world.alice)).json()
    b = http.get(f"{API}/models/registry/{A_MODEL}", headers=auth(world.dave)).json()
    assert (a["provider"], a["model_id"]) == ("openai-compatible", "chat-1")
    assert (b["provider"], b["model_id"]) == ("globex-provider", "globex-upstream")
    assert http.get(f"{API}/models/{A_MODEL}", headers=auth(world.alice)).json()["owned_by"] == (
        "org-acme"
    )
    assert http.get(f"{API}/models/{A_MODEL}", headers=auth(world.dave)).json()["owned_by"] == (
        "org-globex"
    )

    # Org B's writes on the shared id touch org B's row only.
    before_a = db_snapshot(org=world.org_a)
    patched = http.patch(
        f"{API}/models/registry/{A_MODEL}", headers=auth(world.dave), json={"displayName": "B's"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["definition"]["displayName"] == "B's"
    auto = http.put(
        f"{API}/models/auto/completions", headers=auth(world.dave), json={"modelId": A_MODEL}
    )
    assert auto.status_code == 200, auto.text
    assert_unchanged(before_a, org=world.org_a)
    deleted = http.delete(f"{API}/models/registry/{A_MODEL}", headers=auth(world.dave))
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True}
    assert_unchanged(before_a, org=world.org_a)
    a_after = http.get(f"{API}/models/registry/{A_MODEL}", headers=auth(world.alice))
    assert a_after.status_code == 200 and a_after.json()["model_id"] == "chat-1"
    assert AutoModel.objects.filter(org=world.org_a, model_id=A_MODEL).exists()
    assert not AutoModel.objects.filter(org=world.org_b).exists()


def test_org_b_may_reuse_org_a_alias(tenants: Any, http: Any) -> None:
    world = tenants
    body = model_body("globex:other", baseUrl=None, aliases=["acme-alias"])
    response = http.post(f"{API}/models/registry", headers=auth(world.dave), json=body)
    assert response.status_code == 200, response.text
    a = http.get(f"{API}/models/acme-alias", headers=auth(world.alice)).json()
    b = http.get(f"{API}/models/acme-alias", headers=auth(world.dave)).json()
    assert (a["id"], a["owned_by"]) == (A_MODEL, "org-acme")
    assert (b["id"], b["owned_by"]) == ("globex:other", "org-globex")


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "cluster:chat-a"},  # a YAML id
        {"id": "globex:x", "aliases": ["chat-a"]},  # a YAML alias
        {"id": "cluster:hidden-chat"},  # a hidden YAML id, not granted to org B
    ],
    ids=["yaml-id", "yaml-alias", "hidden-yaml-id"],
)
def test_org_model_cannot_take_a_cluster_model_name(
    tenants: Any, http: Any, overrides: dict[str, Any]
) -> None:
    """§5.11: 409 if the id or an alias exists in YAML ("YAML models cannot be overridden")."""
    world = tenants
    before = db_snapshot()
    body = model_body(baseUrl=None, **overrides)
    assert_error(http.post(f"{API}/models/registry", headers=auth(world.dave), json=body), 409)
    assert_unchanged(before)


def test_reroute_target_in_another_org_is_refused(tenants: Any, http: Any) -> None:
    world = tenants
    before = db_snapshot()
    body = model_body(
        "globex:rr",
        baseUrl=None,
        rerouteRules=[{"trigger": {"type": "error-fallback"}, "targetModelId": A_MODEL}],
    )
    response = http.post(f"{API}/models/registry", headers=auth(world.dave), json=body)
    error = assert_error(response, 400)
    assert error["param"] == "rerouteRules[0].targetModelId"
    assert_unchanged(before)


def test_cluster_admin_may_manage_another_orgs_grants(tenants: Any, http: Any) -> None:
    world = tenants
    before_a = db_snapshot(org=world.org_a)
    response = http.put(
        f"{API}/models/cluster_registry/orgs/org-globex/grants",
        headers=auth(world.carol),
        json={"modelIds": ["cluster:chat-b"]},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"org_id": "org-globex", "granted_model_ids": ["cluster:chat-b"]}
    assert_unchanged(before_a, org=world.org_a)


# --- X-On-Behalf-Of (§1.3, A13) -----------------------------------------------------------------

BAD_ON_BEHALF_OF: dict[str, str | bytes] = {
    "empty": "",
    "257-chars": "u" * 257,
    "tab": "end\tuser",  # the one control character HTTP lets through inside a value
    "invalid-utf8": b"end-\xff\xfe-user",
    "truncated-utf8": b"end-\xc3",
}


@pytest.mark.parametrize("variant", list(BAD_ON_BEHALF_OF))
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_bad_on_behalf_of_is_400_everywhere(
    tenants: Any, http: Any, live_url: str, op: Op, variant: str
) -> None:
    """carol may call every op; a bad X-On-Behalf-Of alone must turn each call into a 400."""
    world = tenants
    before = db_snapshot()
    reply = send(
        http,
        live_url,
        op,
        auth(world.carol)["Authorization"],
        extra_headers={"X-On-Behalf-Of": BAD_ON_BEHALF_OF[variant]},
    )
    assert_error(reply, 400)
    assert_unchanged(before)


@pytest.mark.parametrize(
    ("variant", "value"),
    [
        ("x01", b"end\x01user"),
        ("x7f", b"end\x7fuser"),
        ("CR", b"end\ruser"),
        ("LF", b"end\nuser"),
        ("NUL", b"end\x00user"),
    ],
)
def test_on_behalf_of_with_control_bytes_never_succeeds(
    tenants: Any, live_url: str, variant: str, value: bytes
) -> None:
    """Sent as raw bytes (httpx refuses CR/LF/NUL). uvicorn's parser rejects these before the app
    sees them (a plain-text 400); whoever answers, it is a 400 and nothing is written."""
    world = tenants
    before = db_snapshot()
    reply = raw_request(
        live_url,
        "PUT",
        f"{API}/models/auto/embeddings",
        headers=[
            ("Authorization", auth(world.carol)["Authorization"]),
            ("Content-Type", "application/json"),
            ("X-On-Behalf-Of", value),
        ],
        body=b'{"modelId": "cluster:embed"}',
    )
    assert reply.status == 400, (reply.status, reply.text[:300])
    if media_type(reply.headers.get("content-type")) == "application/json":
        assert_error(reply, 400)
    assert_unchanged(before)
    assert not AutoModel.objects.filter(org=world.org_a, endpoint="embeddings").exists()


@pytest.mark.parametrize(
    "value",
    ["end-user-42", "u" * 256, "José Ñoño 用户"],
    ids=["ascii", "256-chars", "utf8"],
)
def test_valid_on_behalf_of_is_recorded_as_the_actor(tenants: Any, http: Any, value: str) -> None:
    world = tenants
    header = {"X-On-Behalf-Of": value.encode("utf-8")}
    services.put_grants(world.org_a, ["cluster:chat-a", "cluster:tts"], actor="setup")

    auto = http.put(
        f"{API}/models/auto/tts",
        headers={**auth(world.carol), **header},
        json={"modelId": "cluster:tts"},
    )
    assert auto.status_code == 200, auto.text
    assert value in auto.json()["set_by"]
    assert value in AutoModel.objects.get(org=world.org_a, endpoint="tts").set_by
    listed = http.get(f"{API}/models/auto", headers=auth(world.alice)).json()["data"]
    assert value in next(a for a in listed if a["endpoint"] == "tts")["set_by"]

    grants = http.put(
        f"{API}/models/cluster_registry/orgs/org-acme/grants",
        headers={**auth(world.carol), **header},
        json={"modelIds": ["cluster:chat-a", "cluster:tts", "cluster:chat-b"]},
    )
    assert grants.status_code == 200, grants.text
    assert value in ClusterGrant.objects.get(org=world.org_a, model_id="cluster:chat-b").granted_by
    listed_grants = http.get(
        f"{API}/models/cluster_registry/orgs/org-acme/grants", headers=auth(world.carol)
    ).json()["data"]
    assert (
        value in next(g for g in listed_grants if g["model_id"] == "cluster:chat-b")["granted_by"]
    )


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_valid_on_behalf_of_is_accepted_everywhere(
    tenants: Any, http: Any, live_url: str, op: Op
) -> None:
    reply = send(
        http,
        live_url,
        op,
        auth(tenants.carol)["Authorization"],
        extra_headers={"X-On-Behalf-Of": "end-user-42"},
    )
    assert reply.status_code == 200, reply.text[:300]
