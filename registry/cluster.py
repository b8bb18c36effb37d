"""The operator's cluster registry: a YAML file of models (`source: "yaml"`) and auto defaults.

The file is validated when the process starts (an invalid file stops it with a message naming the
file, the model and the field) and re-read when it changes; an invalid edit is logged and the last
good registry stays in force.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orgs.errors import InvalidRequest
from registry.schemas import API_FORMATS, dump_definition, parse_definition

logger = logging.getLogger(__name__)
# How often, at most, the file's mtime is looked at.
CHECK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class ClusterModel:
    """An operator model. `definition` holds the real secrets: never return it unredacted."""

    id: str
    definition: dict[str, Any]

    @property
    def provider(self) -> str:
        return self.definition["provider"]

    @property
    def api_format(self) -> str:
        return self.definition["apiFormat"]

    @property
    def hidden(self) -> bool:
        return bool(self.definition.get("hidden"))

    @property
    def aliases(self) -> list[str]:
        return list(self.definition.get("aliases") or [])

    @property
    def health_key(self) -> str:
        return f"yaml:{self.id}"


@dataclass(frozen=True)
class ClusterRegistry:
    path: Path
    models: dict[str, ClusterModel] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    auto: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> ClusterModel | None:
        """A model by id or alias."""
        model = self.models.get(name)
        if model is None and name in self.aliases:
            model = self.models[self.aliases[name]]
        return model

    def names(self) -> set[str]:
        return set(self.models) | set(self.aliases)

    @cached_property
    def sorted_models(self) -> list[ClusterModel]:
        return [self.models[key] for key in sorted(self.models)]


class ClusterRegistryError(ImproperlyConfigured):
    pass


def parse_registry(text: str, path: Path) -> ClusterRegistry:
    """Parse and validate the YAML text; every error names the file, the model and the field."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ClusterRegistryError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterRegistryError(
            f"{path}: the top level must be a mapping with models: and auto:"
        )
    unknown = set(data) - {"models", "auto"}
    if unknown:
        raise ClusterRegistryError(
            f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}"
        )
    raw_models = data.get("models") or []
    if not isinstance(raw_models, list):
        raise ClusterRegistryError(f"{path}: models: must be a list of model definitions")

    models: dict[str, ClusterModel] = {}
    aliases: dict[str, str] = {}
    for index, raw in enumerate(raw_models):
        label = f"models[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            label += f" ({raw['id']})"
        try:
            definition = dump_definition(parse_definition(raw))
        except InvalidRequest as exc:
            raise ClusterRegistryError(f"{path}: {label}: {exc.message}") from None
        model_id = definition["id"]
        if model_id in models or model_id in aliases:
            raise ClusterRegistryError(f"{path}: {label}: id: {model_id!r} is used twice")
        for alias in definition.get("aliases") or []:
            if alias in models or alias in aliases:
                raise ClusterRegistryError(f"{path}: {label}: aliases: {alias!r} is used twice")
            aliases[alias] = model_id
        models[model_id] = ClusterModel(id=model_id, definition=definition)
    clash = set(models) & set(aliases)
    if clash:
        raise ClusterRegistryError(
            f"{path}: aliases clash with model ids: {', '.join(sorted(clash))}"
        )

    raw_auto = data.get("auto") or {}
    if not isinstance(raw_auto, dict):
        raise ClusterRegistryError(f"{path}: auto: must be a mapping of endpoint to model id")
    auto: dict[str, str] = {}
    for endpoint, target in raw_auto.items():
        if endpoint not in API_FORMATS:
            raise ClusterRegistryError(
                f"{path}: auto.{endpoint}: endpoint must be one of {', '.join(API_FORMATS)}"
            )
        model = models.get(target) if isinstance(target, str) else None
        if model is None and isinstance(target, str) and target in aliases:
            model = models[aliases[target]]
        if model is None:
            raise ClusterRegistryError(f"{path}: auto.{endpoint}: unknown model {target!r}")
        if model.api_format != endpoint:
            raise ClusterRegistryError(
                f"{path}: auto.{endpoint}: model {target!r} has apiFormat {model.api_format!r}"
            )
        auto[endpoint] = model.id
    return ClusterRegistry(path=path, models=models, aliases=aliases, auto=auto)


def load_registry(path: Path) -> ClusterRegistry:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterRegistryError(f"{path}: cluster registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterRegistryError(f"{path}: cannot read the cluster registry: {exc}") from None
    return parse_registry(text, path)


class _Loader:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registry: ClusterRegistry | None = None
        self._signature: tuple[str, int, int] | None = None
        self._checked_at = 0.0

    def _signature_of(self, path: Path) -> tuple[str, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (str(path), st.st_mtime_ns, st.st_size)

    def get(self) -> ClusterRegistry:
        path = Path(settings.CLUSTER_REGISTRY_PATH)
        now = time.monotonic()
        registry = self._registry
        if (
            registry is not None
            and registry.path == path
            and now - self._checked_at < CHECK_INTERVAL_SECONDS
        ):
            return registry
        with self._lock:
            self._checked_at = now
            signature = self._signature_of(path)
            if (
                self._registry is not None
                and self._registry.path == path
                and signature == self._signature
            ):
                return self._registry
            try:
                fresh = load_registry(path)
            except ClusterRegistryError as exc:
                if self._registry is None or self._registry.path != path:
                    raise
                logger.error("cluster registry not reloaded, keeping the last good one: %s", exc)
                self._signature = signature
                return self._registry
            if self._registry is not None:
                logger.info(
                    "cluster registry reloaded from %s (%d models)", path, len(fresh.models)
                )
            self._registry, self._signature = fresh, signature
            return fresh

    def reset(self) -> None:
        with self._lock:
            self._registry, self._signature, self._checked_at = None, None, 0.0


_loader = _Loader()


def get_cluster_registry() -> ClusterRegistry:
    return _loader.get()


def reset_cluster_registry() -> None:
    """Forget the loaded file (tests, and after changing CLUSTER_REGISTRY_PATH)."""
    _loader.reset()
