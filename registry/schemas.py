"""The model definition of api-contract.md §5: one schema for the operator YAML and the API.

Field names are the wire's camelCase. `parse_definition` validates a whole definition and raises
`InvalidRequest` whose message names the offending field path, e.g.
`capabilities.modalities.input[0]: must be one of text, image, audio, video`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from orgs.errors import InvalidRequest

SECRET_MARKER = "********"
API_FORMATS = ("responses", "completions", "embeddings", "images", "transcriptions", "tts")
PROVIDER_TYPES = ("groq", "azure", "meetkai", "meetkaiGateway", "fal", "openai")
MODALITIES = ("text", "image", "audio", "video")
RESERVED_IDS = frozenset({"auto", "registry", "cluster_registry"})
MAX_SAFE_INTEGER = 9007199254740991
MAX_AUTH_DEPTH = 3

ApiFormat = Literal["responses", "completions", "embeddings", "images", "transcriptions", "tts"]
ProviderType = Literal["groq", "azure", "meetkai", "meetkaiGateway", "fal", "openai"]
Modality = Literal["text", "image", "audio", "video"]
PosInt = Annotated[int, Field(gt=0, le=MAX_SAFE_INTEGER)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


def _plain_text(value: str) -> str:
    """Names are shown in pages and logs: no control or invisible formatting characters (such
    as RTL overrides or zero-width spaces), and no surrounding whitespace."""
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise ValueError("must not contain control or invisible formatting characters")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain_text)]
OptionalText = Annotated[str, Field(max_length=200), AfterValidator(_plain_text)]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+\-]*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def shown(name: str, limit: int = 120) -> str:
    """A client-supplied name quoted for an error message, cut short when very long."""
    return repr(name if len(name) <= limit else name[:limit] + "…")


def check_model_id(value: str) -> str:
    """The rule for registry ids and aliases (they share one namespace)."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain whitespace")
    if value in RESERVED_IDS:
        raise ValueError(f"{value!r} is reserved")
    if not _ID_RE.match(value):
        raise ValueError(
            "may contain only letters, digits and . _ : @ / + - and must start with a letter or digit"
        )
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[-1] == "health":
        raise ValueError("must not contain empty, '.' or '..' path segments or end in '/health'")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_secret(value: str, field: str) -> str:
    if value == SECRET_MARKER:
        raise ValueError(f"{field} is the redaction marker; send the real secret")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{field} must not contain line breaks")
    return value


class ApiKeyAuth(Strict):
    type: Literal["api-key"]
    value: str | None = None
    envVar: str | None = None
    headerName: str | None = None

    @field_validator("value")
    @classmethod
    def _value(cls, v: str | None) -> str | None:
        return None if v is None else _check_secret(v, "value")

    @field_validator("envVar")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.match(v):
            raise ValueError("must be an environment variable name (letters, digits, _)")
        return v

    @field_validator("headerName")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_NAME_RE.match(v):
            raise ValueError("must be a valid HTTP header name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyAuth:
        if (self.value is None) == (self.envVar is None):
            raise ValueError("exactly one of value or envVar is required")
        return self


class CustomHeadersAuth(Strict):
    type: Literal["custom-headers"]
    headers: dict[str, str]
    envVars: dict[str, str] | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            _check_secret(value, f"header {name}")
        return v

    @field_validator("envVars")
    @classmethod
    def _env_vars(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name, env in (v or {}).items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if not _ENV_NAME_RE.match(env):
                raise ValueError(f"{env!r} is not an environment variable name")
        return v


class NoneAuth(Strict):
    type: Literal["none"]


class CompositeAuth(Strict):
    type: Literal["composite"]
    strategies: Annotated[list[Auth], Field(min_length=1)]


Auth = Annotated[
    Union[ApiKeyAuth, CustomHeadersAuth, NoneAuth, CompositeAuth],  # noqa: UP007
    Field(discriminator="type"),
]
CompositeAuth.model_rebuild()


def auth_depth(auth: dict[str, Any]) -> int:
    """How many composite levels an auth object nests (a plain strategy is 0)."""
    if auth.get("type") != "composite":
        return 0
    return 1 + max((auth_depth(s) for s in auth.get("strategies") or []), default=0)


class Modalities(Strict):
    input: Annotated[list[Modality], Field(min_length=1)]
    output: Annotated[list[Modality], Field(min_length=1)]

    @field_validator("input", "output")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("must not contain duplicates")
        return v


class Resolution(Strict):
    maxWidth: PosInt
    maxHeight: PosInt


class MinResolution(Strict):
    # The SDK uses maxWidth/maxHeight here too (a generator quirk); minWidth/minHeight are accepted.
    maxWidth: PosInt | None = None
    maxHeight: PosInt | None = None
    minWidth: PosInt | None = None
    minHeight: PosInt | None = None

    @model_validator(mode="after")
    def _pair(self) -> MinResolution:
        width = self.maxWidth if self.maxWidth is not None else self.minWidth
        height = self.maxHeight if self.maxHeight is not None else self.minHeight
        # Name the missing key itself (".key message": see validation_error).
        if width is None:
            raise ValueError(".maxWidth is required")
        if height is None:
            raise ValueError(".maxHeight is required")
        return self


class Capabilities(Strict):
    modalities: Modalities
    reasoning: bool
    supportedBase64Formats: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    supportsCompletionVideoUrlMessage: bool | None = None
    supportsTemperature: bool | None = None
    supportsTopP: bool | None = None
    maxImageResolution: Resolution | None = None
    minImageResolution: MinResolution | None = None


class Queue(Strict):
    maxDepth: NonNegInt
    maxWaitMs: NonNegInt


class RateLimit(Strict):
    scope: Literal["global", "org", "user", "apiKey", "externalUser"]
    rpm: PosInt
    duration: PosInt | None = None
    queue: Queue | None = None


class DefaultParams(Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    topP: Annotated[float, Field(ge=0, le=1)] | None = None
    presencePenalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequencyPenalty: Annotated[float, Field(ge=-2, le=2)] | None = None


class InputModalityTrigger(Strict):
    type: Literal["input-modality"]
    modality: Modality


class Base64InputTrigger(Strict):
    type: Literal["base64-input"]


class ContextExceededTrigger(Strict):
    type: Literal["context-exceeded"]


class ErrorFallbackTrigger(Strict):
    type: Literal["error-fallback"]


Trigger = Annotated[
    Union[  # noqa: UP007
        InputModalityTrigger, Base64InputTrigger, ContextExceededTrigger, ErrorFallbackTrigger
    ],
    Field(discriminator="type"),
]


class RerouteRule(Strict):
    trigger: Trigger
    targetModelId: Name
    preserveParams: bool | None = None
    log: bool | None = None


class DimensionRange(Strict):
    min: PosInt
    max: PosInt
    default: PosInt

    @model_validator(mode="after")
    def _order(self) -> DimensionRange:
        if not self.min <= self.default <= self.max:
            raise ValueError("min <= default <= max is required")
        return self


def _dimensions_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "range"
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    return None


Dimensions = Annotated[
    Union[Annotated[PosInt, Tag("int")], Annotated[DimensionRange, Tag("range")]],  # noqa: UP007
    Discriminator(
        _dimensions_tag,
        custom_error_type="invalid_dimensions",
        custom_error_message="must be a positive integer or an object {min, max, default}",
    ),
]


class EmbeddingLimits(Strict):
    maxBatchSize: PosInt | None = None
    dimensions: Dimensions | None = None


class HealthOff(Strict):
    mode: Literal["off"]


class _Probe(Strict):
    path: Annotated[str, Field(min_length=1, max_length=2000)]
    method: Literal["GET", "HEAD"] | None = None
    timeoutMs: Annotated[int, Field(ge=1, le=600_000)] | None = None
    cacheTtlSeconds: NonNegInt | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if "://" in v or v.startswith("//") or any(ch.isspace() or ch == "\\" for ch in v):
            raise ValueError("must be a path relative to baseUrl, such as /health")
        return v


class HealthPreflight(_Probe):
    mode: Literal["preflight"]


class HealthPeriodic(_Probe):
    mode: Literal["periodic"]
    intervalSeconds: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]


class HealthLegacy(Strict):
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    method: Literal["GET", "HEAD"] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)


def _health_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("mode", "legacy") if "mode" in value else "legacy"
    return None


HealthCheck = Annotated[
    Union[  # noqa: UP007
        Annotated[HealthOff, Tag("off")],
        Annotated[HealthPreflight, Tag("preflight")],
        Annotated[HealthPeriodic, Tag("periodic")],
        Annotated[HealthLegacy, Tag("legacy")],
    ],
    Discriminator(
        _health_tag,
        custom_error_type="invalid_health_check",
        custom_error_message="mode must be one of off, preflight, periodic (or give a url)",
    ),
]


class Concurrency(Strict):
    max: PosInt
    maxWaitMs: NonNegInt | None = None


def _check_url(v: str) -> str:
    from registry.upstream import UpstreamURLError, validate_url_syntax

    try:
        validate_url_syntax(v)
    except UpstreamURLError as exc:
        raise ValueError(exc.reason) from None
    return v


class ModelDefinition(Strict):
    id: str
    provider: Name
    modelId: Name
    apiFormat: ApiFormat
    apiProviderType: ProviderType | None = None
    created: Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
    auth: Auth
    capabilities: Capabilities
    displayName: OptionalText | None = None
    baseUrl: Annotated[str, Field(max_length=2000)] | None = None
    contextWindow: PosInt | None = None
    rpm: PosInt | None = None
    rateLimits: Annotated[list[RateLimit], Field(max_length=20)] | None = None
    defaultParams: DefaultParams | None = None
    rerouteRules: Annotated[list[RerouteRule], Field(max_length=20)] | None = None
    hidden: bool | None = None
    embeddingLimits: EmbeddingLimits | None = None
    healthCheck: HealthCheck | None = None
    publicName: OptionalText | None = None
    aliases: Annotated[list[str], Field(max_length=50)] | None = None
    concurrency: Concurrency | None = None
    requestTimeoutMs: Annotated[int, Field(ge=1, le=3_600_000)] | None = None
    maxRetries: Annotated[int, Field(ge=0, le=10)] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_model_id(v)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str] | None) -> list[str] | None:
        for index, alias in enumerate(v or []):
            try:
                check_model_id(alias)
            except ValueError as exc:
                raise ValueError(f"[{index}] {exc}") from None
        if v is not None and len(set(v)) != len(v):
            raise ValueError("must not contain duplicates")
        return v

    @field_validator("baseUrl")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)


def _cross_field_checks(definition: ModelDefinition) -> None:
    """Rules between fields, each reported with the path of the field at fault."""

    def fail(param: str, message: str) -> None:
        raise InvalidRequest(f"{param}: {message}", param=param)

    if definition.aliases and definition.id in definition.aliases:
        fail(
            f"aliases[{definition.aliases.index(definition.id)}]",
            "must not repeat the model's own id",
        )
    own_names = {definition.id, *(definition.aliases or [])}
    for index, rule in enumerate(definition.rerouteRules or []):
        if rule.targetModelId in own_names:
            fail(f"rerouteRules[{index}].targetModelId", "must not be the model itself")
    hc = definition.healthCheck
    if isinstance(hc, HealthPreflight | HealthPeriodic) and not definition.baseUrl:
        fail("healthCheck.path", "a health check path needs baseUrl")


# Fields that PATCH may clear with an explicit null (api-contract.md §5.11).
CLEARABLE_FIELDS = frozenset(
    {
        "displayName",
        "baseUrl",
        "contextWindow",
        "rpm",
        "rateLimits",
        "defaultParams",
        "rerouteRules",
        "hidden",
        "embeddingLimits",
        "healthCheck",
        "concurrency",
        "requestTimeoutMs",
        "maxRetries",
        "publicName",
        "aliases",
    }
)
REQUIRED_FIELDS = frozenset(
    {"provider", "modelId", "apiFormat", "apiProviderType", "created", "auth", "capabilities"}
)
_UNION_TAGS = frozenset(
    {
        "api-key",
        "custom-headers",
        "none",
        "composite",
        "off",
        "preflight",
        "periodic",
        "legacy",
        "input-modality",
        "base64-input",
        "context-exceeded",
        "error-fallback",
        "int",
        "range",
    }
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _UNION_TAGS or part.startswith(("function-", "lax-", "strict-")):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _expected_values(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _format_error(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    match kind:
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "is not a known field"
        case "literal_error":
            return f"must be one of {_expected_values(str(ctx.get('expected', '')))}"
        case "union_tag_invalid":
            return f"must be one of {_expected_values(str(ctx.get('expected_tags', '')))}"
        case "union_tag_not_found":
            return f"{ctx.get('discriminator', 'type')} is required"
        case "string_type":
            return "must be a string"
        case "int_type" | "int_from_float":
            return "must be an integer"
        case "float_type":
            return "must be a number"
        case "bool_type":
            return "must be a boolean"
        case "list_type":
            return "must be an array"
        case "dict_type" | "model_type" | "model_attributes_type":
            return "must be an object"
        case "greater_than":
            return f"must be greater than {ctx.get('gt')}"
        case "greater_than_equal":
            return f"must be at least {ctx.get('ge')}"
        case "less_than_equal":
            return f"must be at most {ctx.get('le')}"
        case "less_than":
            return f"must be less than {ctx.get('lt')}"
        case "string_too_short":
            return "must not be empty" if ctx.get("min_length") == 1 else error["msg"].lower()
        case "string_too_long":
            return f"must be at most {ctx.get('max_length')} characters"
        case "too_short":
            return f"must have at least {ctx.get('min_length')} item(s)"
        case "too_long":
            return f"must have at most {ctx.get('max_length')} items"
        case "value_error":
            return str(ctx.get("error", error["msg"]))
        case "invalid_health_check" | "invalid_dimensions":
            return error["msg"]
    return str(error["msg"])


def validation_error(exc: ValidationError, *, prefix: str = "") -> InvalidRequest:
    """The first problem of a pydantic error as an InvalidRequest naming the field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = _format_loc(tuple(first["loc"]))
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    message = _format_error(first)
    # A validator's own message may start with an index of the field (aliases "[2] ...") or
    # with the name of a key inside it (".maxHeight is required"): it belongs to the path.
    if message.startswith("[") and "]" in message:
        index, _, rest = message.partition("] ")
        path, message = f"{path}{index}]", rest
    elif message.startswith(".") and " " in message:
        key, _, message = message.partition(" ")
        path = f"{path}{key}" if path else key[1:]
    text = f"{path}: {message}" if path else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequest(text, param=path or None)


def parse_definition(data: Any) -> ModelDefinition:
    """Validate a whole model definition (camelCase dict). Explicit nulls count as absent."""
    if not isinstance(data, dict):
        raise InvalidRequest("the model definition must be a JSON object")
    cleaned = {k: v for k, v in data.items() if v is not None}
    try:
        definition = ModelDefinition.model_validate(cleaned)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if auth_depth(cleaned["auth"]) > MAX_AUTH_DEPTH:
        raise InvalidRequest(
            f"auth: composite strategies may nest at most {MAX_AUTH_DEPTH} levels", param="auth"
        )
    _cross_field_checks(definition)
    return definition


def dump_definition(definition: ModelDefinition) -> dict[str, Any]:
    """The stored form: camelCase, only the fields that were set (secrets still in place)."""
    return definition.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def redact_auth(auth: dict[str, Any]) -> dict[str, Any]:
    """A copy of an auth object with every secret replaced by the marker, through composites."""
    out = dict(auth)
    kind = auth.get("type")
    if kind == "api-key" and "value" in auth:
        out["value"] = SECRET_MARKER
    elif kind == "custom-headers":
        out["headers"] = dict.fromkeys(auth.get("headers") or {}, SECRET_MARKER)
    elif kind == "composite":
        out["strategies"] = [redact_auth(s) for s in auth.get("strategies") or []]
    return out


def redact_definition(definition: dict[str, Any]) -> dict[str, Any]:
    out = dict(definition)
    if isinstance(out.get("auth"), dict):
        out["auth"] = redact_auth(out["auth"])
    return out


def model_type_for(api_format: str) -> str:
    return {
        "responses": "llm",
        "completions": "llm",
        "embeddings": "embeddings",
        "images": "images",
        "transcriptions": "speech_to_text",
        "tts": "text_to_speech",
    }.get(api_format, "llm")


def error_fallback_target(definition: dict[str, Any]) -> str | None:
    for rule in definition.get("rerouteRules") or []:
        if (rule.get("trigger") or {}).get("type") == "error-fallback":
            return rule.get("targetModelId")
    return None
