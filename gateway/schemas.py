"""The ChatRequest of api-contract.md §8.1, validated before any upstream call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orgs.errors import InvalidRequest
from registry.schemas import validation_error

MAX_INT32 = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ImageUrl(_Strict):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Strict):
    data: str
    format: Literal["wav", "mp3"]


class FileRef(_Strict):
    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Strict):
    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart,
    Field(discriminator="type"),
]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    # Assistant extras some clients echo back.
    refusal: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                "content is required (null only for assistant messages with tool_calls)"
            )
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool messages need tool_call_id")
        return self


class FunctionDef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class JsonSchemaFormat(_Strict):
    name: str
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: str
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=10_000)]
    tools: list[Tool] | None = None
    tool_choice: Any = None
    stream: bool | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INT32)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_INT32)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    stream_options: StreamOptions | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    auto_routing: bool | None = None
    logit_bias: dict[str, int | float] | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if any(ch.isspace() or ord(ch) < 32 for ch in v):
            raise ValueError("must not contain whitespace or control characters")
        return v

    @model_validator(mode="after")
    def _cross(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self


# Keys a client may try to use to redirect the upstream call or inject credentials (S9).
BANNED_KEYS = frozenset(
    {"api_base", "base_url", "api_key", "headers", "extra_headers", "extra_body", "extra_query"}
)


def _find_banned(value: Any, depth: int = 0) -> str | None:
    if depth > 6:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if key in BANNED_KEYS:
                return key
            found = _find_banned(item, depth + 1)
            if found:
                return found
    return None


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    for key, value in body.items():
        if key in BANNED_KEYS:
            raise InvalidRequest(
                f"{key}: is not allowed; the gateway decides where requests go", param=key
            )
        if key in ("metadata",) and _find_banned(value):
            raise InvalidRequest(f"{key}: must not carry connection settings", param=key)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_tokens(text_chars: int) -> int:
    """A rough token count (about four characters a token), used when an upstream reports no
    usage and for the context-window check."""
    return max(1, (text_chars + 3) // 4)


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(message_text(m)) + 4 for m in messages)
