"""Forms of the dashboard pages.

The model form only *parses* (numbers, lists, JSON) and turns its fields into a model
definition in the API's camelCase; every rule about a definition lives in `registry.schemas` and
is checked by `registry.services`, whose errors are mapped back onto the fields here. Provider
secrets are write-only: they are never put back into a rendered form.
"""

from __future__ import annotations

import copy
import json
import re
import time
from typing import Any

from django import forms

from orgs.errors import ServiceError
from orgs.models import Role
from registry.schemas import (
    API_FORMATS,
    CLEARABLE_FIELDS,
    MODALITIES,
    PROVIDER_TYPES,
    SECRET_MARKER,
)

# ---------------------------------------------------------------------------------------------
# Models list filters


class ModelFilterForm(forms.Form):
    """The search box and filters of the models page (GET). Bad values count as "no filter"."""

    SORTS = ("id", "name", "source", "format", "context", "rpm", "hidden", "health")

    q = forms.CharField(required=False, max_length=200, label="Search")
    source = forms.ChoiceField(
        required=False,
        choices=[("", "Any source"), ("database", "Org models"), ("yaml", "Operator (YAML)")],
    )
    format = forms.ChoiceField(
        required=False, choices=[("", "Any format"), *((f, f) for f in API_FORMATS)]
    )
    health = forms.ChoiceField(
        required=False,
        choices=[("", "Any health"), ("up", "Up"), ("down", "Down"), ("unknown", "Not checked")],
    )
    sort = forms.CharField(required=False, widget=forms.HiddenInput)

    def filters(self) -> dict[str, str]:
        """The cleaned filters, with defaults for anything missing or invalid."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        sort = data.get("sort") or "id"
        if sort.lstrip("-") not in self.SORTS:
            sort = "id"
        return {
            "q": (data.get("q") or "").strip(),
            "source": data.get("source") or "",
            "format": data.get("format") or "",
            "health": data.get("health") or "",
            "sort": sort,
        }


# ---------------------------------------------------------------------------------------------
# Model definition form

# Where a service error's `param` (a field path such as `capabilities.modalities.input[0]`)
# is shown. The longest matching prefix wins; indices are ignored.
PARAM_FIELDS: dict[str, str] = {
    "id": "id",
    "provider": "provider",
    "modelId": "model_id",
    "displayName": "display_name",
    "apiFormat": "api_format",
    "apiProviderType": "api_provider_type",
    "created": "created",
    "baseUrl": "base_url",
    "contextWindow": "context_window",
    "rpm": "rpm",
    "hidden": "hidden",
    "publicName": "public_name",
    "aliases": "aliases",
    "requestTimeoutMs": "request_timeout_ms",
    "maxRetries": "max_retries",
    "auth.value": "auth_value",
    "auth.envVar": "auth_env_var",
    "auth.headerName": "auth_header_name",
    "auth.headers": "auth_headers",
    "auth.envVars": "auth_env_vars",
    "auth.type": "auth_type",
    "capabilities": "input_modalities",
    "capabilities.modalities": "input_modalities",
    "capabilities.modalities.input": "input_modalities",
    "capabilities.modalities.output": "output_modalities",
    "capabilities.reasoning": "reasoning",
    "capabilities.supportedBase64Formats": "base64_formats",
    "capabilities.supportsCompletionVideoUrlMessage": "supports_video_url",
    "capabilities.supportsTemperature": "supports_temperature",
    "capabilities.supportsTopP": "supports_top_p",
    "capabilities.maxImageResolution": "max_image_width",
    "capabilities.maxImageResolution.maxWidth": "max_image_width",
    "capabilities.maxImageResolution.maxHeight": "max_image_height",
    "capabilities.minImageResolution": "min_image_width",
    "capabilities.minImageResolution.maxWidth": "min_image_width",
    "capabilities.minImageResolution.minWidth": "min_image_width",
    "capabilities.minImageResolution.maxHeight": "min_image_height",
    "capabilities.minImageResolution.minHeight": "min_image_height",
    "defaultParams": "temperature",
    "defaultParams.temperature": "temperature",
    "defaultParams.topP": "top_p",
    "defaultParams.presencePenalty": "presence_penalty",
    "defaultParams.frequencyPenalty": "frequency_penalty",
    "healthCheck": "hc_mode",
    "healthCheck.path": "hc_path",
    "healthCheck.url": "hc_url",
    "healthCheck.intervalSeconds": "hc_interval_seconds",
    "healthCheck.method": "hc_method",
    "healthCheck.timeoutMs": "hc_timeout_ms",
    "healthCheck.cacheTtlSeconds": "hc_cache_ttl_seconds",
    "rateLimits": "rate_limits",
    "rerouteRules": "reroute_rules",
    "embeddingLimits": "embedding_limits",
    "concurrency": "concurrency",
}
# Where a bare `auth` error goes, by auth type (e.g. "exactly one of value or envVar").
AUTH_TYPE_FIELDS = {
    "api-key": "auth_value",
    "custom-headers": "auth_headers",
    "composite": "auth_composite",
    "none": "auth_type",
}
_INDEX_RE = re.compile(r"\[\d+\]")
_JSON_SECRET_VALUE_RE = re.compile(r'("value"\s*:\s*)"(?:[^"\\]|\\.)*"')
_JSON_HEADERS_RE = re.compile(r'("headers"\s*:\s*\{)([^{}]*)(\})')
_JSON_PAIR_VALUE_RE = re.compile(r'(:\s*)"(?:[^"\\]|\\.)*"')


def field_for_param(param: str | None, auth_type: str | None) -> str | None:
    """The form field that shows an error about `param`, or None (a non-field error)."""
    if not param:
        return None
    path = _INDEX_RE.sub("", param)
    if path == "auth" or path.startswith("auth."):
        if auth_type == "composite":
            return "auth_composite"
        if path == "auth":
            return AUTH_TYPE_FIELDS.get(auth_type or "", "auth_type")
    while path:
        if path in PARAM_FIELDS:
            return PARAM_FIELDS[path]
        path = path.rpartition(".")[0]
    return None


# Fields whose input is JSON text: their errors keep the path inside the value.
JSON_FIELDS = frozenset(
    {"rate_limits", "reroute_rules", "embedding_limits", "concurrency", "auth_composite"}
)


def form_message(message: str, param: str | None, field: str | None) -> str:
    """The API's message ("baseUrl: must be …") as the form shows it: next to a plain field
    the wire path is dropped (the field's label says which); above the form or under a JSON
    field, or for one item of a list ("aliases[1]"), the path stays: it says where."""
    if not param or field is None or field in JSON_FIELDS or "[" in param:
        return message
    prefix = f"{param}: "
    if message.startswith(prefix):
        rest = message[len(prefix) :]
        return rest[:1].upper() + rest[1:]
    return message


def restore_secrets(new: Any, stored: Any) -> Any:
    """`new` auth with each marker "********" replaced by the stored secret at the same place:
    an api-key `value`, a custom header (by name), recursively through composite strategies
    (by position). A marker with no stored secret behind it stays, and the schema rejects it."""
    if not isinstance(new, dict) or not isinstance(stored, dict):
        return new
    if new.get("type") != stored.get("type"):
        return new
    out = dict(new)
    kind = new.get("type")
    if kind == "api-key":
        if out.get("value") == SECRET_MARKER and isinstance(stored.get("value"), str):
            out["value"] = stored["value"]
    elif kind == "custom-headers" and isinstance(new.get("headers"), dict):
        kept = stored.get("headers") if isinstance(stored.get("headers"), dict) else {}
        out["headers"] = {
            name: kept[name] if value == SECRET_MARKER and name in kept else value
            for name, value in new["headers"].items()
        }
    elif kind == "composite" and isinstance(new.get("strategies"), list):
        old = stored.get("strategies") if isinstance(stored.get("strategies"), list) else []
        out["strategies"] = [
            restore_secrets(s, old[i]) if i < len(old) else s
            for i, s in enumerate(new["strategies"])
        ]
    return out


def scrub_json_secrets(value: Any) -> Any:
    """Any JSON with every api-key `value` and every `headers` value replaced by the marker."""
    if isinstance(value, list):
        return [scrub_json_secrets(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == "value" and isinstance(item, str):
            out[key] = SECRET_MARKER
        elif key == "headers" and isinstance(item, dict):
            out[key] = dict.fromkeys(item, SECRET_MARKER)
        else:
            out[key] = scrub_json_secrets(item)
    return out


def _scrub_json_text(text: str) -> str:
    """The composite auth text without secrets, for showing it again after an error."""
    try:
        parsed = json.loads(text)
    except ValueError:
        # Not JSON: blank what looks like a secret rather than echo it.
        text = _JSON_SECRET_VALUE_RE.sub(rf'\1"{SECRET_MARKER}"', text)
        return _JSON_HEADERS_RE.sub(
            lambda m: (
                m.group(1)
                + _JSON_PAIR_VALUE_RE.sub(rf'\1"{SECRET_MARKER}"', m.group(2))
                + m.group(3)
            ),
            text,
        )
    return json.dumps(scrub_json_secrets(parsed), indent=2)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_lines(text: str, what: str) -> dict[str, str]:
    """`Name: value` lines into a dict (blank lines are skipped)."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise forms.ValidationError(f"line {number}: write it as 'Header-Name: {what}'")
        if name in out:
            raise forms.ValidationError(f"line {number}: header {name!r} is given twice")
        out[name] = value.strip()
    return out


def _present(**values: Any) -> dict[str, Any]:
    """The keys that have a value (a missing one is then reported by the schema by name)."""
    return {key: value for key, value in values.items() if value is not None}


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2)


def _bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


class TriState(forms.NullBooleanSelect):
    """Yes / No / not set (the field is left out of the definition)."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.choices = [("unknown", "Not set"), ("true", "Yes"), ("false", "No")]


class ModelDefinitionForm(forms.Form):
    """Every field of a model definition (api-contract.md §5), grouped as on the page."""

    # --- Basics
    id = forms.CharField(
        label="Id",
        max_length=400,
        help_text="How clients call the model, e.g. acme:chat-large. Cannot be changed later.",
    )
    display_name = forms.CharField(label="Display name", required=False, max_length=400)
    provider = forms.CharField(max_length=400, help_text="e.g. openai-compatible")
    model_id = forms.CharField(
        label="Upstream model id", max_length=400, help_text="The provider's name of the model."
    )
    api_format = forms.ChoiceField(
        label="API format", choices=[(f, f) for f in API_FORMATS], initial="completions"
    )
    api_provider_type = forms.ChoiceField(
        label="Provider type",
        required=False,
        choices=[("", "—"), *((p, p) for p in PROVIDER_TYPES)],
        help_text="Cannot be cleared once set.",
    )
    created = forms.IntegerField(
        label="Created", help_text="Unix time in seconds; defaults to now."
    )
    base_url = forms.CharField(
        label="Base URL",
        required=False,
        max_length=2000,
        help_text="e.g. https://models.example.com/v1",
    )
    context_window = forms.IntegerField(label="Context window (tokens)", required=False)
    rpm = forms.IntegerField(label="Requests per minute", required=False)
    hidden = forms.BooleanField(
        label="Hidden from model listings", required=False, help_text="Still callable by id."
    )
    public_name = forms.CharField(label="Public name", required=False, max_length=400)
    aliases = forms.CharField(
        required=False, max_length=12000, help_text="Other names for the model, comma-separated."
    )
    request_timeout_ms = forms.IntegerField(label="Request timeout (ms)", required=False)
    max_retries = forms.IntegerField(label="Max retries", required=False)

    # --- Auth (secrets are write-only)
    auth_type = forms.ChoiceField(
        label="Type",
        choices=[
            ("api-key", "API key"),
            ("custom-headers", "Custom headers"),
            ("none", "None"),
            ("composite", "Composite (JSON)"),
        ],
        initial="api-key",
    )
    auth_value = forms.CharField(
        label="API key",
        required=False,
        max_length=8000,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    auth_env_var = forms.CharField(
        label="…or environment variable",
        required=False,
        max_length=200,
        help_text="Read from the server's environment at call time, e.g. OPENAI_API_KEY.",
    )
    auth_header_name = forms.CharField(
        label="Header name",
        required=False,
        max_length=200,
        help_text="Leave blank to send 'Authorization: Bearer <key>'.",
    )
    auth_headers = forms.CharField(
        label="Headers",
        required=False,
        max_length=20000,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocomplete": "off"}),
        help_text=f"One 'Header-Name: value' per line. Values are write-only: "
        f"'{SECRET_MARKER}' or an empty value keeps the stored value.",
    )
    auth_env_vars = forms.CharField(
        label="Headers from environment variables",
        required=False,
        max_length=20000,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="One 'Header-Name: ENV_VAR' per line.",
    )
    auth_composite = forms.CharField(
        label="Strategies (JSON)",
        required=False,
        max_length=50000,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"}),
        help_text=(
            f'A composite auth object, e.g. {{"type": "composite", "strategies": '
            f'[{{"type": "api-key", "envVar": "KEY"}}, {{"type": "custom-headers", "headers": '
            f'{{"X-Org": "acme"}}}}]}}. Stored secrets appear as "{SECRET_MARKER}": leave a '
            f"marker in place to keep the secret stored at that position."
        ),
    )

    # --- Capabilities
    input_modalities = forms.MultipleChoiceField(
        label="Input",
        required=False,
        choices=[(m, m) for m in MODALITIES],
        widget=forms.CheckboxSelectMultiple,
        initial=["text"],
    )
    output_modalities = forms.MultipleChoiceField(
        label="Output",
        required=False,
        choices=[(m, m) for m in MODALITIES],
        widget=forms.CheckboxSelectMultiple,
        initial=["text"],
    )
    reasoning = forms.BooleanField(label="Reasoning model", required=False)
    supports_temperature = forms.NullBooleanField(
        label="Supports temperature", required=False, widget=TriState
    )
    supports_top_p = forms.NullBooleanField(label="Supports top_p", required=False, widget=TriState)
    supports_video_url = forms.NullBooleanField(
        label="Video URLs in chat messages", required=False, widget=TriState
    )
    base64_formats = forms.CharField(
        label="Base64 formats",
        required=False,
        max_length=4000,
        help_text="MIME types, comma-separated, e.g. image/png, image/jpeg.",
    )
    max_image_width = forms.IntegerField(label="Max image width", required=False)
    max_image_height = forms.IntegerField(label="Max image height", required=False)
    min_image_width = forms.IntegerField(label="Min image width", required=False)
    min_image_height = forms.IntegerField(label="Min image height", required=False)

    # --- Default parameters
    temperature = forms.FloatField(label="Temperature", required=False, help_text="0–2")
    top_p = forms.FloatField(label="Top p", required=False, help_text="0–1")
    presence_penalty = forms.FloatField(label="Presence penalty", required=False, help_text="−2–2")
    frequency_penalty = forms.FloatField(
        label="Frequency penalty", required=False, help_text="−2–2"
    )

    # --- Health check
    hc_mode = forms.ChoiceField(
        label="Mode",
        required=False,
        choices=[
            ("", "Not set"),
            ("off", "Off"),
            ("preflight", "Preflight (before routing)"),
            ("periodic", "Periodic"),
            ("legacy", "Legacy: absolute URL, on demand"),
        ],
    )
    hc_path = forms.CharField(
        label="Path",
        required=False,
        max_length=2000,
        help_text="Relative to the base URL, e.g. /health.",
    )
    hc_url = forms.CharField(label="URL (legacy)", required=False, max_length=2000)
    hc_interval_seconds = forms.IntegerField(label="Interval (seconds)", required=False)
    hc_method = forms.ChoiceField(
        label="Method",
        required=False,
        choices=[("", "Default (GET)"), ("GET", "GET"), ("HEAD", "HEAD")],
    )
    hc_timeout_ms = forms.IntegerField(label="Timeout (ms)", required=False)
    hc_cache_ttl_seconds = forms.IntegerField(label="Cache TTL (seconds)", required=False)

    # --- Advanced (JSON)
    _json_widget = {"rows": 4, "spellcheck": "false", "class": "mono"}
    rate_limits = forms.CharField(
        label="Rate limits",
        required=False,
        max_length=50000,
        widget=forms.Textarea(attrs=_json_widget),
        help_text='A JSON array, e.g. [{"scope": "org", "rpm": 60}, {"scope": "user", "rpm": 10, '
        '"queue": {"maxDepth": 5, "maxWaitMs": 2000}}]. Scopes: global, org, user, apiKey, '
        "externalUser.",
    )
    reroute_rules = forms.CharField(
        label="Reroute rules",
        required=False,
        max_length=50000,
        widget=forms.Textarea(attrs=_json_widget),
        help_text='A JSON array, e.g. [{"trigger": {"type": "error-fallback"}, "targetModelId": '
        '"acme:backup"}, {"trigger": {"type": "input-modality", "modality": "image"}, '
        '"targetModelId": "acme:vision"}].',
    )
    embedding_limits = forms.CharField(
        label="Embedding limits",
        required=False,
        max_length=50000,
        widget=forms.Textarea(attrs=_json_widget),
        help_text='A JSON object, e.g. {"maxBatchSize": 2048, "dimensions": {"min": 256, '
        '"max": 1536, "default": 1536}}.',
    )
    concurrency = forms.CharField(
        label="Concurrency",
        required=False,
        max_length=50000,
        widget=forms.Textarea(attrs=_json_widget),
        help_text='A JSON object, e.g. {"max": 8, "maxWaitMs": 5000}.',
    )

    JSON_FIELDS = ("rate_limits", "reroute_rules", "embedding_limits", "concurrency")
    SECTIONS: dict[str, tuple[str, ...]] = {
        "basics": (
            "id",
            "display_name",
            "provider",
            "model_id",
            "api_format",
            "api_provider_type",
            "base_url",
            "created",
            "context_window",
            "rpm",
            "public_name",
            "aliases",
            "request_timeout_ms",
            "max_retries",
            "hidden",
        ),
        "auth_api_key": ("auth_value", "auth_env_var", "auth_header_name"),
        "auth_headers": ("auth_headers", "auth_env_vars"),
        "auth_composite": ("auth_composite",),
        "capabilities": (
            "reasoning",
            "supports_temperature",
            "supports_top_p",
            "supports_video_url",
            "base64_formats",
            "max_image_width",
            "max_image_height",
            "min_image_width",
            "min_image_height",
        ),
        "default_params": ("temperature", "top_p", "presence_penalty", "frequency_penalty"),
        "health": (
            "hc_path",
            "hc_interval_seconds",
            "hc_method",
            "hc_timeout_ms",
            "hc_cache_ttl_seconds",
            "hc_url",
        ),
        "advanced": ("rate_limits", "reroute_rules", "embedding_limits", "concurrency"),
    }

    def __init__(
        self,
        *args: Any,
        stored: dict[str, Any] | None = None,
        stored_auth: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """`stored` is the redacted definition being edited (None: a new model); `stored_auth`
        its auth with the real secrets, used only to restore kept secrets, never rendered."""
        self.stored = stored
        self._stored_auth = stored_auth
        if stored is not None and "initial" not in kwargs:
            kwargs["initial"] = initial_from_definition(stored)
        super().__init__(*args, **kwargs)
        self.secret_notes: list[str] = []
        if stored is not None:
            del self.fields["id"]
            self.stored_secret = (stored.get("auth") or {}).get("value") == SECRET_MARKER
        else:
            self.fields["created"].initial = int(time.time())
            self.stored_secret = False

    @property
    def is_edit(self) -> bool:
        return self.stored is not None

    def section(self, name: str) -> list[forms.BoundField]:
        return [self[field] for field in self.SECTIONS[name] if field in self.fields]

    # Sections as properties, for the template.
    @property
    def basics(self) -> list[forms.BoundField]:
        return self.section("basics")

    @property
    def auth_api_key_fields(self) -> list[forms.BoundField]:
        return self.section("auth_api_key")

    @property
    def auth_headers_fields(self) -> list[forms.BoundField]:
        return self.section("auth_headers")

    @property
    def capability_fields(self) -> list[forms.BoundField]:
        return self.section("capabilities")

    @property
    def default_param_fields(self) -> list[forms.BoundField]:
        return self.section("default_params")

    @property
    def health_fields(self) -> list[forms.BoundField]:
        return self.section("health")

    @property
    def advanced_fields(self) -> list[forms.BoundField]:
        return self.section("advanced")

    @property
    def advanced_open(self) -> bool:
        """Open the JSON section when it holds something or an error."""
        return any(self[name].value() or self[name].errors for name in self.JSON_FIELDS)

    @property
    def stored_header_names(self) -> list[str]:
        auth = (self.stored or {}).get("auth") or {}
        return list(auth.get("headers") or {}) if auth.get("type") == "custom-headers" else []

    # --- parsing

    def _clean_json(self, name: str) -> Any:
        text = (self.cleaned_data.get(name) or "").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None

    def clean_rate_limits(self) -> Any:
        return self._clean_json("rate_limits")

    def clean_reroute_rules(self) -> Any:
        return self._clean_json("reroute_rules")

    def clean_embedding_limits(self) -> Any:
        return self._clean_json("embedding_limits")

    def clean_concurrency(self) -> Any:
        return self._clean_json("concurrency")

    def clean_auth_headers(self) -> dict[str, str]:
        return _parse_lines(self.cleaned_data.get("auth_headers") or "", "value")

    def clean_auth_env_vars(self) -> dict[str, str]:
        return _parse_lines(self.cleaned_data.get("auth_env_vars") or "", "ENV_VAR")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("auth_type") == "composite":
            text = (data.get("auth_composite") or "").strip()
            if not text:
                self.add_error("auth_composite", "enter the composite auth object as JSON")
            else:
                try:
                    data["auth_composite"] = json.loads(text)
                except ValueError as exc:
                    self.add_error("auth_composite", f"not valid JSON: {exc}")
        return data

    # --- building the definition

    def _auth(self) -> dict[str, Any]:
        data = self.cleaned_data
        kind = data.get("auth_type") or "none"
        stored = self._stored_auth
        auth: dict[str, Any]
        if kind == "api-key":
            auth = {"type": "api-key"}
            value = data.get("auth_value") or ""
            env = (data.get("auth_env_var") or "").strip()
            if value:
                auth["value"] = value
            elif not env and stored and stored.get("type") == "api-key" and "value" in stored:
                auth["value"] = SECRET_MARKER  # blank on edit: keep the stored key
            if env:
                auth["envVar"] = env
            if data.get("auth_header_name"):
                auth["headerName"] = data["auth_header_name"].strip()
        elif kind == "custom-headers":
            kept = stored.get("headers") or {} if stored else {}
            headers = {}
            for name, value in (data.get("auth_headers") or {}).items():
                if value in ("", SECRET_MARKER) and name in kept:
                    value = SECRET_MARKER
                headers[name] = value
            auth = {"type": "custom-headers", "headers": headers}
            if data.get("auth_env_vars"):
                auth["envVars"] = data["auth_env_vars"]
        elif kind == "composite":
            auth = copy.deepcopy(data.get("auth_composite"))
        else:
            auth = {"type": "none"}
        return restore_secrets(auth, stored) if stored else auth

    def definition(self) -> dict[str, Any]:
        """The whole definition in the API's camelCase, with real secrets (restored on edit);
        None for every empty optional field. Call after is_valid()."""
        data = self.cleaned_data

        def opt(name: str) -> Any:
            value = data.get(name)
            return None if value in ("", None) else value

        capabilities: dict[str, Any] = {
            "modalities": {
                "input": list(data.get("input_modalities") or []),
                "output": list(data.get("output_modalities") or []),
            },
            "reasoning": bool(data.get("reasoning")),
        }
        for key, name in (
            ("supportsTemperature", "supports_temperature"),
            ("supportsTopP", "supports_top_p"),
            ("supportsCompletionVideoUrlMessage", "supports_video_url"),
        ):
            if data.get(name) is not None:
                capabilities[key] = data[name]
        formats = _split_list(data.get("base64_formats") or "")
        if formats:
            capabilities["supportedBase64Formats"] = formats
        if opt("max_image_width") is not None or opt("max_image_height") is not None:
            capabilities["maxImageResolution"] = _present(
                maxWidth=opt("max_image_width"), maxHeight=opt("max_image_height")
            )
        if opt("min_image_width") is not None or opt("min_image_height") is not None:
            # The SDK names these maxWidth/maxHeight too (api-contract.md §5.4).
            capabilities["minImageResolution"] = _present(
                maxWidth=opt("min_image_width"), maxHeight=opt("min_image_height")
            )

        params = {
            key: data[name]
            for key, name in (
                ("temperature", "temperature"),
                ("topP", "top_p"),
                ("presencePenalty", "presence_penalty"),
                ("frequencyPenalty", "frequency_penalty"),
            )
            if data.get(name) is not None
        }

        health: dict[str, Any] | None = None
        mode = data.get("hc_mode") or ""
        if mode == "off":
            health = {"mode": "off"}
        elif mode in ("preflight", "periodic"):
            health = {"mode": mode, "path": opt("hc_path")}
            if mode == "periodic":
                health["intervalSeconds"] = opt("hc_interval_seconds")
            for key, name in (
                ("method", "hc_method"),
                ("timeoutMs", "hc_timeout_ms"),
                ("cacheTtlSeconds", "hc_cache_ttl_seconds"),
            ):
                if opt(name) is not None:
                    health[key] = data[name]
        elif mode == "legacy":
            health = {"url": opt("hc_url")}
            if opt("hc_method") is not None:
                health["method"] = data["hc_method"]
        if health is not None:
            health = {k: v for k, v in health.items() if v is not None}

        aliases = _split_list(data.get("aliases") or "")
        definition: dict[str, Any] = {
            "id": self.stored["id"] if self.stored is not None else data.get("id"),
            "provider": data.get("provider"),
            "modelId": data.get("model_id"),
            "apiFormat": data.get("api_format"),
            "apiProviderType": opt("api_provider_type"),
            "created": data.get("created"),
            "auth": self._auth(),
            "capabilities": capabilities,
            "displayName": opt("display_name"),
            "baseUrl": opt("base_url"),
            "contextWindow": opt("context_window"),
            "rpm": opt("rpm"),
            "rateLimits": data.get("rate_limits"),
            "defaultParams": params or None,
            "rerouteRules": data.get("reroute_rules"),
            # Unticked clears `hidden`, or keeps an explicit false as false.
            "hidden": True
            if data.get("hidden")
            else (False if self.stored is not None and "hidden" in self.stored else None),
            "embeddingLimits": data.get("embedding_limits"),
            "healthCheck": health,
            "publicName": opt("public_name"),
            "aliases": aliases or None,
            "concurrency": data.get("concurrency"),
            "requestTimeoutMs": opt("request_timeout_ms"),
            "maxRetries": opt("max_retries"),
        }
        return definition

    def patch(self) -> dict[str, Any]:
        """The update body for an edit: the fields that differ from the stored definition, an
        explicit null for each cleared one, and no `auth` when it (and its secrets) is kept.
        Absent keys are kept by the service, so this equals sending every field, with an audit
        trail that names only what changed."""
        assert self.stored is not None
        definition = self.definition()
        full_stored = {**self.stored, "auth": self._stored_auth}
        body: dict[str, Any] = {}
        for key, value in definition.items():
            if key == "id":
                continue
            if value is None:
                if key in CLEARABLE_FIELDS and key in self.stored:
                    body[key] = None
                continue  # a required field cannot be cleared: keep it
            if full_stored.get(key) != value:
                body[key] = value
        return body

    # --- errors and secrets

    def add_service_error(self, exc: ServiceError) -> None:
        """Show a service error next to the field its `param` names (or above the form)."""
        auth_type = self.data.get("auth_type")
        field = field_for_param(exc.param, auth_type if isinstance(auth_type, str) else None)
        if field not in self.fields:
            field = None
        self.add_error(field, form_message(exc.message, exc.param, field))

    def scrub_secrets(self) -> None:
        """Before this bound form is shown again: drop every secret the user typed, so that no
        page ever contains a provider secret (the password input never renders its value)."""
        data = self.data.copy()
        if data.get("auth_value"):
            self.secret_notes.append("The API key you typed was not kept: enter it again.")
        data["auth_value"] = ""
        text = data.get("auth_headers") or ""
        if text:
            kept = set(self.stored_header_names)
            lines, typed = [], False
            for line in text.splitlines():
                name, sep, value = line.partition(":")
                if sep and value.strip() and value.strip() != SECRET_MARKER:
                    typed = True
                if sep:
                    marker = SECRET_MARKER if name.strip() in kept else ""
                    line = f"{name.strip()}: {marker}".rstrip()
                lines.append(line)
            data["auth_headers"] = "\n".join(lines)
            if typed:
                self.secret_notes.append("Header values you typed were not kept: enter them again.")
        text = data.get("auth_composite") or ""
        if text.strip():
            scrubbed = _scrub_json_text(text)
            if scrubbed != text and _has_typed_secret(text):
                self.secret_notes.append(
                    "Secrets you typed in the composite JSON were replaced by "
                    f"{SECRET_MARKER}: enter them again."
                )
            data["auth_composite"] = scrubbed
        self.data = data


def _has_typed_secret(text: str) -> bool:
    try:
        parsed = json.loads(text)
    except ValueError:
        return True
    return json.dumps(scrub_json_secrets(parsed)) != json.dumps(parsed)


def initial_from_definition(d: dict[str, Any]) -> dict[str, Any]:
    """Form initial values from a stored (redacted) definition. Secrets are never included:
    an api-key value stays blank, header values show the marker."""
    auth = d.get("auth") or {}
    caps = d.get("capabilities") or {}
    modalities = caps.get("modalities") or {}
    params = d.get("defaultParams") or {}
    hc = d.get("healthCheck") or {}
    max_res = caps.get("maxImageResolution") or {}
    min_res = caps.get("minImageResolution") or {}
    initial: dict[str, Any] = {
        "display_name": d.get("displayName", ""),
        "provider": d.get("provider", ""),
        "model_id": d.get("modelId", ""),
        "api_format": d.get("apiFormat", "completions"),
        "api_provider_type": d.get("apiProviderType", ""),
        "created": d.get("created"),
        "base_url": d.get("baseUrl", ""),
        "context_window": d.get("contextWindow"),
        "rpm": d.get("rpm"),
        "hidden": bool(d.get("hidden")),
        "public_name": d.get("publicName", ""),
        "aliases": ", ".join(d.get("aliases") or []),
        "request_timeout_ms": d.get("requestTimeoutMs"),
        "max_retries": d.get("maxRetries"),
        "auth_type": auth.get("type", "none"),
        "input_modalities": list(modalities.get("input") or []),
        "output_modalities": list(modalities.get("output") or []),
        "reasoning": bool(caps.get("reasoning")),
        "supports_temperature": _bool_or_none(caps.get("supportsTemperature")),
        "supports_top_p": _bool_or_none(caps.get("supportsTopP")),
        "supports_video_url": _bool_or_none(caps.get("supportsCompletionVideoUrlMessage")),
        "base64_formats": ", ".join(caps.get("supportedBase64Formats") or []),
        "max_image_width": max_res.get("maxWidth"),
        "max_image_height": max_res.get("maxHeight"),
        "min_image_width": min_res.get("maxWidth", min_res.get("minWidth")),
        "min_image_height": min_res.get("maxHeight", min_res.get("minHeight")),
        "temperature": params.get("temperature"),
        "top_p": params.get("topP"),
        "presence_penalty": params.get("presencePenalty"),
        "frequency_penalty": params.get("frequencyPenalty"),
        "hc_mode": hc.get("mode", "legacy" if "url" in hc else ""),
        "hc_path": hc.get("path", ""),
        "hc_url": hc.get("url", ""),
        "hc_interval_seconds": hc.get("intervalSeconds"),
        "hc_method": hc.get("method", ""),
        "hc_timeout_ms": hc.get("timeoutMs"),
        "hc_cache_ttl_seconds": hc.get("cacheTtlSeconds"),
        "rate_limits": _json_text(d.get("rateLimits")),
        "reroute_rules": _json_text(d.get("rerouteRules")),
        "embedding_limits": _json_text(d.get("embeddingLimits")),
        "concurrency": _json_text(d.get("concurrency")),
    }
    if auth.get("type") == "api-key":
        initial["auth_env_var"] = auth.get("envVar", "")
        initial["auth_header_name"] = auth.get("headerName", "")
    elif auth.get("type") == "custom-headers":
        initial["auth_headers"] = "\n".join(
            f"{name}: {SECRET_MARKER}" for name in auth.get("headers") or {}
        )
        initial["auth_env_vars"] = "\n".join(
            f"{name}: {env}" for name, env in (auth.get("envVars") or {}).items()
        )
    elif auth.get("type") == "composite":
        # Already redacted (markers only); scrubbed again in case of a stray secret.
        initial["auth_composite"] = json.dumps(scrub_json_secrets(auth), indent=2)
    return initial


# ---------------------------------------------------------------------------------------------
# API keys


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=200, required=False, help_text="What the key is for, e.g. 'ci' or 'ops'."
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)
    cluster_admin = forms.BooleanField(
        required=False,
        label="Cluster admin",
        help_text="May also manage what every org can use (grants).",
    )

    def __init__(self, *args: Any, allow_cluster_admin: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not allow_cluster_admin:
            # Only superusers may issue cluster-admin keys: the field does not exist otherwise.
            del self.fields["cluster_admin"]


class AutoModelForm(forms.Form):
    model_id = forms.CharField(max_length=400, required=False, label="Model")
