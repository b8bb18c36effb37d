"""The OpenAPI document (dashboard/openapi.py) against the wire contract, and where it is served.

The contract's operation index (api-contract.md §3) and its request tables (§5.1, §5.2, §7.1,
§8.1, §9.1) are parsed here and compared with the document: the same paths and methods, the same
required request fields, every listed field present, the same enums. Either file changing alone
fails this test.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from dashboard import openapi
from tests.conftest import auth

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = Path(os.environ.get("API_CONTRACT_PATH", ROOT.parent / "shared" / "api-contract.md"))
PREFIX = "/api/v1/llm"
DOC_URL = f"{PREFIX}/openapi.json"

# The index's "Request" column: a schema named by a section heading, an inline JSON body, a
# multipart form, or no body at all.
NO_BODY = ("—", "none (no body)", "query")


@pytest.fixture(scope="module")
def contract() -> str:
    if not CONTRACT.exists():
        pytest.skip(f"the wire contract is not at {CONTRACT} (set API_CONTRACT_PATH)")
    return CONTRACT.read_text()


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


def _cells(line: str) -> list[str]:
    """A table row's cells (an escaped `\\|` inside a cell is not a separator)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def contract_operations(text: str) -> dict[tuple[str, str], str]:
    """(METHOD, path) → the "Request" cell, from the §3 operation index."""
    section = text.split("## 3. Operation index", 1)[1].split("\n## ", 1)[0]
    ops = {}
    for line in section.splitlines():
        match = re.search(r"`(GET|POST|PUT|PATCH|DELETE) (/api/v1/llm/[^`]*)`", line)
        if match and line.startswith("|"):
            ops[(match.group(1), match.group(2))] = _cells(line)[3]
    return ops


def _section(text: str, heading_contains: str) -> str:
    """The text of the first `###` section whose heading contains the given words."""
    for part in re.split(r"\n(?=#{2,3} )", text):
        heading = part.split("\n", 1)[0]
        if heading.startswith("###") and heading_contains in heading:
            return part
    raise AssertionError(f"no contract section named {heading_contains!r}")


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def field_table(section: str) -> dict[str, dict[str, str]]:
    """Rows of the section's `| Field | Type | Req |` table: field → {"type", "req"}. A cell
    may name several fields (`frequency_penalty`, `presence_penalty`)."""
    rows: dict[str, dict[str, str]] = {}
    in_table = False
    for line in section.splitlines():
        if line.startswith("| Field | Type | Req"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            break
        cells = _cells(line)
        if set(cells[0]) <= {"-", " "}:
            continue
        for name in _ticked(cells[0]):
            rows[name] = {"type": cells[1], "req": cells[2]}
    assert rows, "the section has no field table"
    return rows


def _enum_of_cell(cell: str) -> list[str] | None:
    """`a` \\| `b` \\| `c` (optionally "or **null**"): the values; anything else: None."""
    core = re.sub(r"\s*or \*\*null\*\*\s*$", "", cell)
    parts = [p.strip() for p in core.split("\\|")]
    if len(parts) < 2 or not all(re.fullmatch(r"`[^`]+`", p) for p in parts):
        return None
    return [p.strip("`") for p in parts]


def request_spec(text: str, request: str) -> dict[str, Any]:
    """What the contract says of one request: required fields, listed fields, enums."""
    inline = _ticked(request)
    if inline and inline[0].startswith("{"):
        keys = re.findall(r'"([A-Za-z_]+)"\s*:', inline[0])
        return {"required": set(keys), "fields": set(keys), "enums": {}}
    if request == "file + purpose":
        table = _section(text, "POST /api/v1/llm/files")
        purposes = next(
            _enum_of_cell(_cells(line)[2].split("(")[0].strip())
            for line in table.splitlines()
            if line.startswith("| `purpose`")
        )
        parts = {"file", "purpose"}
        return {"required": parts, "fields": parts, "enums": {"purpose": purposes}}
    if request.startswith("Update"):
        # §5.11: every field of the add body is optional on update, and the id cannot change.
        update = _section(text, "5.11 Registry operations")
        assert "Every field of §5.2 is optional" in update
        assert "`id` cannot change" in update
        add = request_spec(text, "AddRegistryModelRequest")
        return {"required": set(), "fields": add["fields"] - {"id"}, "enums": add["enums"]}
    rows = field_table(_section(text, request))
    enums = {name: values for name, row in rows.items() if (values := _enum_of_cell(row["type"]))}
    if request == "AddRegistryModelRequest":
        for line in _section(text, "5.1 Enums").splitlines():
            cells = _cells(line) if line.startswith("| ") else []
            names = _ticked(cells[0]) if cells else []
            if names and names[-1] in rows:
                enums[names[-1]] = _ticked(cells[1])
    return {
        "required": {name for name, row in rows.items() if row["req"] == "**required**"},
        "fields": set(rows),
        "enums": enums,
    }


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _enum(doc: dict[str, Any], schema: dict[str, Any]) -> list[Any] | None:
    schema = _resolve(doc, schema)
    if "enum" in schema:
        return schema["enum"]
    for option in schema.get("anyOf", []):
        if "enum" in option:
            return option["enum"]
    return None


def document_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, methods in doc["paths"].items()
        for method, op in methods.items()
        if path != DOC_URL
    }


def body_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    if "requestBody" not in op:
        return None
    (spec,) = op["requestBody"]["content"].values()
    return _resolve(doc, spec["schema"])


# --- the document against the contract ---------------------------------------------------------


def test_the_parser_reads_the_whole_operation_index(contract):
    ops = contract_operations(contract)
    rows = re.findall(r"^\| (\d+) \| `llm\.", contract, flags=re.M)
    assert len(ops) == len(rows) == int(rows[-1]) >= 25


def test_every_contract_operation_and_no_other_is_documented(contract, doc):
    assert set(document_operations(doc)) == set(contract_operations(contract))


def test_required_request_fields_listed_fields_and_enums_match(contract, doc):
    ops = document_operations(doc)
    checked = 0
    for key, request in contract_operations(contract).items():
        schema = body_schema(doc, ops[key])
        if request in NO_BODY:
            assert schema is None, f"{key}: the contract has no body, the document has one"
            continue
        assert schema is not None, f"{key}: the contract has a body ({request})"
        spec = request_spec(contract, request)
        assert set(schema.get("required", [])) == spec["required"], key
        assert spec["fields"] <= set(schema["properties"]), (
            key,
            spec["fields"] - set(schema["properties"]),
        )
        for name, values in spec["enums"].items():
            assert _enum(doc, schema["properties"][name]) == values, (key, name)
        checked += 1
    assert checked == 8  # add, update, grants, auto, upload, batches, both chats


def test_the_parsed_required_fields_are_what_the_contract_says(contract):
    """A guard on the parser itself: a few facts read off the contract by hand."""
    chat = request_spec(contract, "ChatRequest")
    assert chat["required"] == {"model", "messages"}
    assert chat["enums"]["reasoning_effort"][0] == "none"
    add = request_spec(contract, "AddRegistryModelRequest")
    assert {"id", "auth", "capabilities"} <= add["required"]
    assert "apiProviderType" not in add["required"]  # "required by SDK", optional on the server
    assert add["enums"]["apiFormat"] == list(openapi.API_FORMATS)
    batch = request_spec(contract, "CreateBatchRequest")
    assert batch["required"] == {"input_file_id", "endpoint"}
    assert batch["enums"]["endpoint"] == list(openapi.BATCH_ENDPOINTS)
    assert request_spec(contract, '`{"modelIds": [..]}`')["required"] == {"modelIds"}


def test_file_content_is_documented_with_the_types_the_contract_allows(contract, doc):
    section = _section(contract, "/files/{file_id}/content")
    listed = section.split("content-type is one of:", 1)[1].split("\n\n", 1)[0]
    allowed = {t for t in _ticked(listed) if not t.endswith(".*")}
    # "the three `application/vnd.openxmlformats-officedocument.*` (wordprocessingml.document, …)"
    for stem, names in re.findall(r"`([^`]+)\.\*` \(([^)]*)\)", listed):
        allowed |= {f"{stem}.{name.strip()}" for name in names.split(",")}
    op = doc["paths"][f"{PREFIX}/files/{{file_id}}/content"]["get"]
    documented = set(op["responses"]["200"]["content"])
    assert documented <= allowed, documented - allowed  # never a type the SDK refuses
    assert len(documented) >= len(allowed) - 1  # all of them but image/jpg (sniffed as jpeg)
    assert "application/octet-stream" not in allowed


def test_every_operation_takes_a_bearer_key_and_x_on_behalf_of(doc):
    assert doc["security"] == [{"bearerAuth": []}]
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    obo = doc["components"]["parameters"]["OnBehalfOf"]
    assert obo["name"] == "X-On-Behalf-Of" and obo["schema"]["maxLength"] == 256
    for key, op in document_operations(doc).items():
        assert "security" not in op, key
        assert {"$ref": "#/components/parameters/OnBehalfOf"} in op["parameters"], key
        path_params = {p["name"] for p in op["parameters"] if p.get("in") == "path"}
        assert path_params == set(re.findall(r"\{([^}]+)\}", key[1])), key
    assert doc["paths"][DOC_URL]["get"]["security"] == []


def test_errors_are_documented_in_the_contract_shape(doc):
    error = doc["components"]["schemas"]["Error"]
    inner = error["properties"]["error"]
    assert error["required"] == ["error"]
    assert set(inner["required"]) == {"message", "type", "param", "code"}
    assert inner["properties"]["code"]["type"] == "integer"
    for key, op in document_operations(doc).items():
        responses = op["responses"]
        assert set(responses) >= {"200", "400", "401", "default"}, key
        for status, spec in responses.items():
            if status == "200":
                continue
            ref = spec["$ref"].rsplit("/", 1)[1]
            content = doc["components"]["responses"][ref]["content"]
            assert content == {"application/json": {"schema": {"$ref": REF_ERROR}}}, key
        if op["x-scope"] in ("admin", "cluster"):
            assert "403" in responses, key


REF_ERROR = "#/components/schemas/Error"


def test_the_document_is_valid_openapi_3_1(doc):
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    assert doc["openapi"].startswith("3.1")
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert errors == []


# --- where it is served ------------------------------------------------------------------------


@pytest.mark.django_db
def test_served_without_a_key_cacheable_and_built_once(http):
    first = http.get(DOC_URL)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert "public" in first.headers["cache-control"]
    assert first.json() == openapi.document()
    again = http.get(DOC_URL, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert http.get(DOC_URL).content == first.content
    assert openapi._cached.cache_info().misses == 1


@pytest.mark.django_db
def test_a_key_is_not_needed_but_a_bad_one_does_not_matter_and_writes_get_405(http):
    assert http.get(DOC_URL, headers=auth("mk_not-a-key")).status_code == 200
    for method in ("POST", "PUT", "DELETE"):
        response = http.request(method, DOC_URL)
        assert response.status_code == 405
        assert response.json()["error"]["type"] == "method_not_allowed"
        assert response.json()["error"]["code"] == 405


# --- the reference page ------------------------------------------------------------------------


@pytest.fixture
def signed_in(client, django_user_model):
    user = django_user_model.objects.create_user("reader", password="x" * 20)
    client.force_login(user)
    return client


def test_the_reference_page_lists_every_operation_without_inline_code(signed_in, doc):
    response = signed_in.get("/docs/api")
    assert response.status_code == 200
    body = response.content.decode()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            assert f'id="{op["operationId"]}"' in body
            assert f"<code>{method.upper()} {path}</code>" in body
    assert 'id="schema-AddRegistryModelRequest"' in body and "modelIds" in body
    assert re.search(r"<script(?![^>]*\ssrc=)", body) is None  # only external scripts
    assert "<style" not in body and " style=" not in body
    assert "https://" not in body.split("</head>")[0]
    nav = body.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
    assert 'href="/docs/api" aria-current="page"' in nav


def test_the_reference_page_needs_a_sign_in(client, db):
    response = client.get("/docs/api")
    assert response.status_code == 302 and "/login" in response["Location"]


def test_the_document_is_json_serialisable_and_stable(doc):
    assert json.loads(json.dumps(doc)) == openapi.document()
