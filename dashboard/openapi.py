"""The OpenAPI 3.1 description of the JSON API (api-contract.md), built once per process.

Request bodies of the registry and the gateway come from the pydantic models that validate them
(`registry.schemas.ModelDefinition`, `gateway.schemas.ChatRequest`), so the document and the
server cannot disagree on those; the small bodies and every response are written out below.
`GET /api/v1/llm/openapi.json` serves the document (no key needed) and `/docs/api` renders it as
a reference page.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from pydantic.json_schema import models_json_schema

from orgs.errors import MethodNotAllowed
from orgs.jsonapi import error_response

API_PREFIX = "/api/v1/llm"
DOCUMENT_PATH = f"{API_PREFIX}/openapi.json"
REF = "#/components/schemas/{model}"

SCOPES = {
    "public": "No key needed.",
    "key": "Any valid API key of the org.",
    "admin": "An org admin key.",
    "cluster": "A cluster admin key.",
}
ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid JSON, a missing or invalid field, a bad enum value"),
    401: ("authentication_error", "Missing, malformed, unknown or revoked bearer token"),
    403: ("permission_error", "The key lacks the admin or cluster-admin scope"),
    404: ("not_found_error", "Unknown, or another org's, object"),
    405: ("method_not_allowed", "Known path, wrong method"),
    409: ("conflict_error", "Duplicate id, or a state that forbids the change"),
    413: ("invalid_request_error", "Body or upload larger than the configured maximum"),
    415: ("invalid_request_error", "Wrong Content-Type for the body"),
    429: ("rate_limit_error", "rpm or rateLimits exceeded; see Retry-After"),
    502: ("upstream_error", "The model provider failed"),
    503: ("service_unavailable", "A backing service (rate-limit store) is unreachable"),
    504: ("upstream_error", "The model provider timed out"),
}
API_FORMATS = ["responses", "completions", "embeddings", "images", "transcriptions", "tts"]
UPLOAD_PURPOSES = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
BATCH_ENDPOINTS = ["/v1/chat/completions", "/v1/embeddings", "/v1/images/generations"]
BATCH_STATUSES = [
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
# What file content may be served as (api-contract.md §7.5: what the SDK accepts).
FILE_CONTENT_TYPES = [
    "application/jsonl",
    "application/json",
    "application/x-ndjson",
    "text/plain",
    "text/csv",
    "text/html",
    "text/css",
    "text/javascript",
    "text/markdown",
    "text/xml",
    "text/x-python",
    "application/xml",
    "application/javascript",
    "application/pdf",
    "application/msword",
    "application/rtf",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/tiff",
    "image/svg+xml",
]
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+\-]*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(
    properties: dict[str, Any], required: list[str] | None = None, *, closed: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
NULLABLE_INT = _nullable(INTEGER)
NULLABLE_STRING = _nullable(STRING)
ISO_TIME = {"type": "string", "format": "date-time"}


# --- schemas -----------------------------------------------------------------------------------


def _strip_titles(value: Any) -> Any:
    """Drop pydantic's generated `title`s (noise in a reference); a property named `title`
    stays."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "title" and isinstance(item, str):
                continue
            if key == "properties" and isinstance(item, dict):
                out[key] = {name: _strip_titles(prop) for name, prop in item.items()}
            else:
                out[key] = _strip_titles(item)
        return out
    if isinstance(value, list):
        return [_strip_titles(item) for item in value]
    return value


def _pydantic_schemas() -> dict[str, Any]:
    from gateway.schemas import ChatRequest
    from registry.schemas import ModelDefinition

    _, top = models_json_schema(
        [(ModelDefinition, "validation"), (ChatRequest, "validation")], ref_template=REF
    )
    schemas: dict[str, Any] = _strip_titles(top["$defs"])

    add = schemas.pop("ModelDefinition")
    add["description"] = (
        "A model definition in the wire's camelCase (api-contract.md §5.2). An explicit null "
        "counts as absent."
    )
    add["properties"]["id"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": MODEL_ID_PATTERN,
        "description": "namespace:name; not auto, registry or cluster_registry",
    }
    add["properties"]["baseUrl"] = _nullable(
        {"type": "string", "format": "uri", "maxLength": 2000, "pattern": "^https?://"}
    )
    schemas["AddRegistryModelRequest"] = add

    # PATCH: every field optional; absent keeps, null clears (only the clearable fields).
    from registry.schemas import REQUIRED_FIELDS

    update: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "description": "Absent key = keep; explicit null = clear (api-contract.md §5.11).",
        "properties": {},
    }
    for name, prop in add["properties"].items():
        if name == "id":
            continue
        if name in REQUIRED_FIELDS and "anyOf" in prop:
            options = [p for p in prop["anyOf"] if p != {"type": "null"}]
            prop = options[0] if len(options) == 1 else {"anyOf": options}
        else:
            prop = {k: v for k, v in prop.items() if k != "default"}
        update["properties"][name] = prop
    schemas["UpdateRegistryModelRequest"] = update
    schemas["ChatRequest"]["description"] = "OpenAI-compatible chat request (api-contract.md §8.1)."
    return schemas


def _error_schema() -> dict[str, Any]:
    return _obj(
        {
            "error": _obj(
                {
                    "message": {"type": "string", "description": "What was wrong."},
                    "type": {
                        "type": "string",
                        "enum": sorted({kind for kind, _ in ERROR_TYPES.values()}),
                    },
                    "param": {
                        "anyOf": [STRING, {"type": "null"}],
                        "description": "The offending field path, or null.",
                    },
                    "code": {"type": "integer", "description": "The HTTP status."},
                },
                ["message", "type", "param", "code"],
            )
        },
        ["error"],
    )


def _written_schemas() -> dict[str, Any]:
    model = _obj(
        {
            "id": STRING,
            "object": {"const": "model"},
            "created": INTEGER,
            "owned_by": STRING,
            "model_type": {
                "type": "string",
                "examples": ["llm", "embeddings", "images", "speech_to_text", "text_to_speech"],
            },
        },
        ["id", "object", "created", "owned_by", "model_type"],
    )
    registry_model = _obj(
        {
            "id": STRING,
            "provider": STRING,
            "model_id": STRING,
            "source": {"type": "string", "enum": ["database", "yaml"]},
            "immutable": BOOLEAN,
            "definition": {
                "type": "object",
                "description": "The stored definition (camelCase), secrets replaced by ********.",
            },
            "health": _obj(
                {
                    "is_available": BOOLEAN,
                    "last_health_check": _nullable({"type": "number"}),
                    "error": NULLABLE_STRING,
                },
                ["is_available", "last_health_check", "error"],
            ),
            "created_at": _nullable({"type": "number"}),
            "updated_at": _nullable({"type": "number"}),
        },
        [
            "id",
            "provider",
            "model_id",
            "source",
            "immutable",
            "definition",
            "health",
            "created_at",
            "updated_at",
        ],
    )
    file = _obj(
        {
            "id": STRING,
            "object": {"const": "file"},
            "bytes": INTEGER,
            "created_at": INTEGER,
            "filename": STRING,
            "purpose": {"type": "string", "examples": [*UPLOAD_PURPOSES, "batch_output"]},
            "status": {"type": "string", "examples": ["uploaded", "processed", "error"]},
            "status_details": NULLABLE_STRING,
            "expires_at": NULLABLE_INT,
        },
        ["id", "bytes", "created_at", "filename", "purpose"],
    )
    batch_error = _obj(
        {"code": STRING, "message": STRING, "param": NULLABLE_STRING, "line": NULLABLE_INT},
        ["code", "message"],
    )
    batch = _obj(
        {
            "id": {"type": "string", "pattern": "^batch_[0-9a-f]{32}$"},
            "object": {"const": "batch"},
            "endpoint": STRING,
            "input_file_id": STRING,
            "completion_window": STRING,
            "status": {"type": "string", "examples": BATCH_STATUSES},
            "created_at": INTEGER,
            **dict.fromkeys(
                (
                    "in_progress_at",
                    "expires_at",
                    "finalizing_at",
                    "completed_at",
                    "failed_at",
                    "expired_at",
                    "cancelling_at",
                    "cancelled_at",
                ),
                NULLABLE_INT,
            ),
            "output_file_id": NULLABLE_STRING,
            "error_file_id": NULLABLE_STRING,
            "errors": _nullable(
                _obj({"object": {"const": "list"}, "data": {"type": "array", "items": batch_error}})
            ),
            "request_counts": _obj(
                {"total": INTEGER, "completed": INTEGER, "failed": INTEGER},
                ["total", "completed", "failed"],
            ),
            "metadata": _nullable({"type": "object", "additionalProperties": STRING}),
        },
        ["id", "endpoint", "input_file_id", "completion_window", "status", "created_at"]
        + ["request_counts"],
    )
    usage = _obj(
        {"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER},
        ["prompt_tokens", "completion_tokens", "total_tokens"],
    )
    chat_completion = _obj(
        {
            "id": STRING,
            "object": {"const": "chat.completion"},
            "created": INTEGER,
            "model": {"type": "string", "description": "The resolved registry id."},
            "choices": {
                "type": "array",
                "items": _obj(
                    {
                        "index": INTEGER,
                        "message": _obj(
                            {
                                "role": {"const": "assistant"},
                                "content": {"description": "string, content parts or null"},
                                "tool_calls": {"type": "array", "items": _ref("ToolCall")},
                            },
                            ["content"],
                        ),
                        "finish_reason": NULLABLE_STRING,
                    },
                    ["index", "message", "finish_reason"],
                ),
            },
            "usage": usage,
            "system_fingerprint": NULLABLE_STRING,
        },
        ["id", "created", "model", "choices", "usage"],
    )

    def listing(item: str, cursor: bool = False) -> dict[str, Any]:
        props: dict[str, Any] = {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(item)},
        }
        required = ["data"]
        if cursor:
            props |= {"first_id": NULLABLE_STRING, "last_id": NULLABLE_STRING, "has_more": BOOLEAN}
            required.append("has_more")
        return _obj(props, required)

    return {
        "Error": _error_schema(),
        "Model": model,
        "ListModelsResponse": listing("Model"),
        "RegistryModelResponse": registry_model,
        "RegistryModelListResponse": listing("RegistryModelResponse"),
        "DeleteRegistryModelResponse": _obj({"deleted": {"const": True}}, ["deleted"]),
        "HealthCheckResponse": _obj(
            {"is_available": BOOLEAN, "checked_at": {"type": "number"}, "error": NULLABLE_STRING},
            ["is_available", "checked_at"],
        ),
        "ClusterRegistryModel": _obj(
            {
                "id": STRING,
                "provider": STRING,
                "api_format": STRING,
                "hidden": BOOLEAN,
                "error_fallback_model_id": NULLABLE_STRING,
            },
            ["id", "provider", "api_format", "hidden", "error_fallback_model_id"],
        ),
        "ListClusterRegistryResponse": listing("ClusterRegistryModel"),
        "ClusterGrant": _obj(
            {"org_id": STRING, "model_id": STRING, "granted_by": STRING, "granted_at": ISO_TIME},
            ["org_id", "model_id", "granted_by", "granted_at"],
        ),
        "ListClusterRegistryGrantsResponse": listing("ClusterGrant"),
        "PutClusterRegistryGrantsRequest": _obj(
            {
                "modelIds": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "The full set of granted cluster model ids; [] revokes all.",
                }
            },
            ["modelIds"],
            closed=True,
        ),
        "PutClusterRegistryGrantsResponse": _obj(
            {"org_id": STRING, "granted_model_ids": {"type": "array", "items": STRING}},
            ["org_id", "granted_model_ids"],
        ),
        "OrgAutoModel": _obj(
            {"endpoint": STRING, "model_id": STRING, "set_by": STRING, "set_at": ISO_TIME},
            ["endpoint", "model_id", "set_by", "set_at"],
        ),
        "ListOrgAutoModelsResponse": listing("OrgAutoModel"),
        "PutOrgAutoModelRequest": _obj(
            {
                "modelId": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A model of the org with this apiFormat; not auto.",
                }
            },
            ["modelId"],
            closed=True,
        ),
        "DeleteOrgAutoModelResponse": _obj(
            {"endpoint": STRING, "cleared": {"const": True}}, ["endpoint", "cleared"]
        ),
        "UploadFileRequest": _obj(
            {
                "purpose": {"type": "string", "enum": UPLOAD_PURPOSES},
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "For purpose batch: UTF-8 JSONL, a JSON object per line.",
                },
            },
            ["purpose", "file"],
        ),
        "File": file,
        "FileList": listing("File", cursor=True),
        "FileDeletionStatus": _obj(
            {"id": STRING, "object": {"const": "file"}, "deleted": BOOLEAN}, ["id", "deleted"]
        ),
        "CreateBatchRequest": _obj(
            {
                "input_file_id": {"type": "string", "minLength": 1},
                "endpoint": {"type": "string", "enum": BATCH_ENDPOINTS},
                "completion_window": {"type": "string", "enum": ["24h"], "default": "24h"},
                "metadata": _nullable(
                    {
                        "type": "object",
                        "maxProperties": 16,
                        "propertyNames": {"maxLength": 64},
                        "additionalProperties": {"type": "string", "maxLength": 512},
                    }
                ),
            },
            ["input_file_id", "endpoint"],
            closed=True,
        ),
        "Batch": batch,
        "ListBatchesResponse": listing("Batch", cursor=True),
        "ChatCompletion": chat_completion,
    }


# --- operations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # under API_PREFIX
    operation_id: str
    summary: str
    tag: str
    scope: str
    response: str | None = None  # a component schema name for a JSON 200
    body: str | None = None  # a component schema name for a JSON body
    body_media: str = "application/json"
    query: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    stream: bool = False  # 200 is text/event-stream


_ID_ERRORS = (404,)
_BODY_ERRORS = (400, 413, 415)
_CHAT_ERRORS = (*_BODY_ERRORS, 404, 429, 502, 503, 504)

# fmt: off
OPERATIONS: tuple[Op, ...] = (
    Op("get", "/models", "listModels", "List the models the org can use", "Models", "key",
       "ListModelsResponse"),
    Op("get", "/models/{model_id}", "getModel", "Get one usable model (ids, aliases, hidden)",
       "Models", "key", "Model", errors=_ID_ERRORS),
    Op("post", "/models/registry", "addRegistryModel", "Add an org model", "Registry", "admin",
       "RegistryModelResponse", body="AddRegistryModelRequest", errors=(*_BODY_ERRORS, 409)),
    Op("get", "/models/registry", "listRegistryModels",
       "List org models and granted cluster models", "Registry", "admin",
       "RegistryModelListResponse"),
    Op("patch", "/models/registry/{id}", "updateRegistryModel",
       "Update an org model (absent = keep, null = clear)", "Registry", "admin",
       "RegistryModelResponse", body="UpdateRegistryModelRequest",
       errors=(*_BODY_ERRORS, 404, 409)),
    Op("delete", "/models/registry/{id}", "removeRegistryModel", "Remove an org model",
       "Registry", "admin", "DeleteRegistryModelResponse", errors=_ID_ERRORS),
    Op("get", "/models/registry/{id}", "getRegistryModel", "Get a registry model", "Registry",
       "admin", "RegistryModelResponse", errors=_ID_ERRORS),
    Op("post", "/models/registry/{id}/health", "checkRegistryModelHealth",
       "Probe the model's upstream now (no body)", "Registry", "admin", "HealthCheckResponse",
       errors=_ID_ERRORS),
    Op("get", "/models/cluster_registry", "listClusterRegistry", "List every operator model",
       "Cluster registry", "cluster", "ListClusterRegistryResponse"),
    Op("get", "/models/cluster_registry/orgs/{orgId}/grants", "listClusterRegistryOrgGrants",
       "List an org's grants", "Cluster registry", "cluster",
       "ListClusterRegistryGrantsResponse", errors=_ID_ERRORS),
    Op("put", "/models/cluster_registry/orgs/{orgId}/grants", "putClusterRegistryOrgGrants",
       "Replace an org's grants", "Cluster registry", "cluster",
       "PutClusterRegistryGrantsResponse", body="PutClusterRegistryGrantsRequest",
       errors=(*_BODY_ERRORS, 404)),
    Op("get", "/models/auto", "listOrgAutoModels", "List the org's auto-model overrides",
       "Auto models", "admin", "ListOrgAutoModelsResponse"),
    Op("put", "/models/auto/{endpoint}", "putOrgAutoModel", "Set the org's auto model",
       "Auto models", "admin", "OrgAutoModel", body="PutOrgAutoModelRequest",
       errors=(*_BODY_ERRORS, 404)),
    Op("delete", "/models/auto/{endpoint}", "deleteOrgAutoModel",
       "Clear the org's auto model (idempotent)", "Auto models", "admin",
       "DeleteOrgAutoModelResponse", errors=_ID_ERRORS),
    Op("post", "/files", "uploadFile", "Upload a file (multipart: purpose, file)", "Files", "key",
       "File", body="UploadFileRequest", body_media="multipart/form-data",
       errors=_BODY_ERRORS),
    Op("get", "/files", "listFiles", "List files", "Files", "key", "FileList",
       query=("after", "files_limit", "order", "purpose")),
    Op("get", "/files/{file_id}", "getFile", "Get a file", "Files", "key", "File",
       errors=_ID_ERRORS),
    Op("delete", "/files/{file_id}", "deleteFile", "Delete a file", "Files", "key",
       "FileDeletionStatus", errors=(404, 409)),
    Op("get", "/files/{file_id}/content", "getFileContent", "Download a file's bytes", "Files",
       "key", errors=_ID_ERRORS),
    Op("post", "/batches", "createBatch", "Start a batch of chat completions", "Batches", "key",
       "Batch", body="CreateBatchRequest", errors=(*_BODY_ERRORS, 404)),
    Op("get", "/batches", "listBatches", "List batches, newest first", "Batches", "key",
       "ListBatchesResponse", query=("after", "batches_limit")),
    Op("get", "/batches/{batch_id}", "getBatch", "Get a batch", "Batches", "key", "Batch",
       errors=_ID_ERRORS),
    Op("post", "/batches/{batch_id}/cancel", "cancelBatch", "Cancel a batch (no body)", "Batches",
       "key", "Batch", errors=(404, 409)),
    Op("post", "/chat/completions", "createChatCompletion",
       "Chat completion: JSON, or OpenAI SSE with stream: true", "Chat", "key",
       "ChatCompletion", body="ChatRequest", errors=_CHAT_ERRORS),
    Op("post", "/chat/completions/stream", "createChatCompletionStream",
       "Chat completion as a resumable event stream (message / done / error)", "Chat", "key",
       body="ChatRequest", errors=_CHAT_ERRORS, stream=True),
)
# fmt: on

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "model_id": {"description": "A model id or alias; may contain ':' and '/'.", **STRING},
    "id": {"description": "A registry model id; may contain ':' and '/'.", **STRING},
    "orgId": {"description": "The org's slug.", **STRING},
    "endpoint": {"type": "string", "enum": API_FORMATS},
    "file_id": STRING,
    "batch_id": STRING,
}
QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "after": {
        "name": "after",
        "description": "The id of the last item of the previous page (unknown: 400).",
        "schema": STRING,
    },
    "files_limit": {
        "name": "limit",
        "description": "Page size, 1–10000 (larger is clamped).",
        "schema": {"type": "integer", "minimum": 1, "default": 10000},
    },
    "batches_limit": {
        "name": "limit",
        "description": "Page size, 1–100 (larger is clamped).",
        "schema": {"type": "integer", "minimum": 1, "default": 20},
    },
    "order": {
        "name": "order",
        "description": "By created_at, then id.",
        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
    },
    "purpose": {
        "name": "purpose",
        "schema": {"type": "string", "enum": [*UPLOAD_PURPOSES, "batch_output"]},
    },
}


# One server-sent event each (the `schema` of a text/event-stream response describes an event).
ORPC_EVENT = _obj(
    {
        "event": {"type": "string", "enum": ["message", "done", "error"]},
        "data": {
            "type": "string",
            "description": "message: a chat.completion.chunk (JSON); done: null; error: a JSON string",
        },
        "id": {"type": "string", "description": "The chunk index of a message event."},
    },
    ["event", "data"],
)
OPENAI_EVENT = _obj(
    {"data": {"type": "string", "description": "A chat.completion.chunk (JSON), then [DONE]."}},
    ["data"],
)


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _success(op: Op) -> dict[str, Any]:
    if op.operation_id == "getFileContent":
        content = {ct: {"schema": {"type": "string"}} for ct in FILE_CONTENT_TYPES}
        return {
            "description": "The stored bytes, with their sniffed content type.",
            "content": content,
        }
    if op.stream:
        return {
            "description": "`event: message` chunks (with `id:`), then `event: done`; "
            "a failure after the first byte ends with `event: error`.",
            "content": {"text/event-stream": {"schema": ORPC_EVENT}},
        }
    assert op.response is not None
    content: dict[str, Any] = {"application/json": {"schema": _ref(op.response)}}
    if op.operation_id == "createChatCompletion":
        content["text/event-stream"] = {"schema": OPENAI_EVENT}
    return {"description": "OK", "content": content}


def _operation(op: Op) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
        for name in _path_params(op.path)
    ]
    params += [{"$ref": f"#/components/parameters/{name}"} for name in op.query]
    params.append({"$ref": "#/components/parameters/OnBehalfOf"})
    if op.stream:
        params.append({"$ref": "#/components/parameters/LastChunkIndex"})
    scope_errors = {"admin": (403,), "cluster": (403,)}.get(op.scope, ())
    statuses = sorted({400, 401, *scope_errors, *op.errors})
    responses: dict[str, Any] = {"200": _success(op)}
    responses |= {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": SCOPES[op.scope],
        "tags": [op.tag],
        "x-scope": op.scope,
        "parameters": params,
        "responses": responses,
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {op.body_media: {"schema": _ref(op.body)}},
        }
    return out


def _document_operation() -> dict[str, Any]:
    return {
        "operationId": "getOpenApiDocument",
        "summary": "This document",
        "description": SCOPES["public"],
        "tags": ["Meta"],
        "x-scope": "public",
        "security": [],
        "responses": {
            "200": {
                "description": "OpenAPI 3.1",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "default": {"$ref": "#/components/responses/Error"},
        },
    }


def build_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call; `document()` is the cached one)."""
    schemas = {**_pydantic_schemas(), **_written_schemas()}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(API_PREFIX + op.path, {})[op.method] = _operation(op)
    paths[DOCUMENT_PATH] = {"get": _document_operation()}
    error_content = {"application/json": {"schema": _ref("Error")}}
    responses = {
        f"E{status}": {"description": f"{kind}: {text}", "content": error_content}
        for status, (kind, text) in ERROR_TYPES.items()
    }
    responses["Error"] = {"description": "Any other error, same shape", "content": error_content}
    parameters = {
        "OnBehalfOf": {
            "name": "X-On-Behalf-Of",
            "in": "header",
            "required": False,
            "description": "The org's end user (files and batches are scoped to it).",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "pattern": r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$",
            },
        },
        "LastChunkIndex": {
            "name": "x-last-chunk-index",
            "in": "header",
            "required": False,
            "description": "Resume after this chunk index (>= -1).",
            "schema": {"type": "integer", "minimum": -1},
        },
        **{
            name: {"in": "query", "required": False, **spec}
            for name, spec in QUERY_PARAMETERS.items()
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM gateway API (MKA1 LLM API)",
            "version": "1.0.0",
            "description": "Every error is JSON: "
            '`{"error": {"message", "type", "param", "code"}}` with the HTTP status as `code`. '
            "Every success is 200.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in OPERATIONS)]
        + [{"name": "Meta"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: Authorization: Bearer mk_…",
                }
            },
            "parameters": parameters,
            "responses": responses,
            "schemas": dict(sorted(schemas.items())),
        },
    }


@lru_cache(maxsize=1)
def _cached() -> tuple[dict[str, Any], bytes, str]:
    doc = build_document()
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return doc, raw, '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def document() -> dict[str, Any]:
    """The document, built once per process (a copy: callers may change it)."""
    return copy.deepcopy(_cached()[0])


@csrf_exempt
def openapi_json(request: HttpRequest) -> HttpResponseBase:
    """GET /api/v1/llm/openapi.json: no key needed, cacheable, with an ETag."""
    if request.method not in ("GET", "HEAD"):
        return error_response(
            MethodNotAllowed(
                f"method {request.method} is not allowed here; use GET",
                headers={"Allow": "GET, HEAD"},
            )
        )
    _, raw, etag = _cached()
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304, headers=headers)
    return HttpResponse(raw, content_type="application/json", headers=headers)


# --- the reference page ------------------------------------------------------------------------


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def describe(schema: dict[str, Any]) -> str:
    """A short type text for the reference page: `string`, `integer ≥ 1`, `one of a, b`, …"""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [describe(s) for s in schema[key] if s != {"type": "null"}]
            text = " | ".join(parts) or "any"
            if {"type": "null"} in schema[key]:
                text += " | null"
            return text
    kind = schema.get("type")
    if kind == "array":
        text = f"array of {describe(schema.get('items', {}))}"
    elif kind is None:
        text = "any"
    else:
        text = str(kind)
        if schema.get("format"):
            text += f" ({schema['format']})"
    bounds = [
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ]
    extras = [f"{sign} {schema[key]}" for key, sign in bounds if key in schema]
    return text + (f", {', '.join(extras)}" if extras else "")


def reference() -> list[dict[str, Any]]:
    """The operations as plain data for the reference page, grouped by tag in document order."""
    doc = _cached()[0]
    groups: dict[str, list[dict[str, Any]]] = {}
    parameters = doc["components"]["parameters"]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = []
            for param in op.get("parameters", []):
                if "$ref" in param:
                    param = parameters[param["$ref"].rsplit("/", 1)[1]]
                params.append(
                    {
                        "name": param["name"],
                        "where": param["in"],
                        "required": param.get("required", False),
                        "type": describe(param["schema"]),
                        "description": param.get("description", ""),
                    }
                )
            body = None
            if "requestBody" in op:
                media, spec = next(iter(op["requestBody"]["content"].items()))
                schema = _resolve(doc, spec["schema"])
                required = set(schema.get("required", []))
                body = {
                    "name": spec["schema"]["$ref"].rsplit("/", 1)[1],
                    "media": media,
                    "fields": [
                        {"name": name, "required": name in required, "type": describe(prop)}
                        for name, prop in schema.get("properties", {}).items()
                    ],
                }
            responses = []
            for status, spec in op["responses"].items():
                if "$ref" in spec:
                    spec = doc["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
                media = list(spec.get("content", {}))
                responses.append(
                    {"status": status, "description": spec["description"], "media": media}
                )
            groups.setdefault(op["tags"][0], []).append(
                {
                    "anchor": op["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "short_path": path.removeprefix(API_PREFIX),
                    "summary": op["summary"],
                    "scope": op["x-scope"],
                    "scope_text": op["description"],
                    "parameters": params,
                    "body": body,
                    "responses": responses,
                }
            )
    return [{"tag": tag, "operations": ops} for tag, ops in groups.items()]


def reference_schemas() -> list[dict[str, Any]]:
    """The component schemas with their fields, for the reference page."""
    doc = _cached()[0]
    out = []
    for name, schema in doc["components"]["schemas"].items():
        required = set(schema.get("required", []))
        fields = [
            {"name": field, "required": field in required, "type": describe(prop)}
            for field, prop in schema.get("properties", {}).items()
        ]
        out.append(
            {
                "name": name,
                "description": schema.get("description", ""),
                "type": "" if fields else describe(schema),
                "fields": fields,
            }
        )
    return out
