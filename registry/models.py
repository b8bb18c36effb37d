"""Org-owned registry models, cluster grants, auto-model overrides and health status."""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.utils import timezone

from orgs.models import Org
from registry import crypto
from registry.schemas import redact_definition


class RegistryModelQuerySet(models.QuerySet["RegistryModel"]):
    def for_org(self, org: Org) -> RegistryModelQuerySet:
        """The one scoping door: every lookup of an org model goes through here."""
        return self.filter(org=org)


class RegistryModel(models.Model):
    """A model an org registered itself (`source: "database"`)."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="registry_models")
    registry_id = models.CharField(max_length=200, help_text="The id clients call the model by.")
    provider = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, help_text="modelId: the upstream's name.")
    api_format = models.CharField(max_length=32, db_index=True)
    display_name = models.CharField(max_length=200, blank=True)
    base_url = models.CharField(max_length=2000, blank=True)
    context_window = models.PositiveBigIntegerField(null=True, blank=True)
    rpm = models.PositiveBigIntegerField(null=True, blank=True)
    hidden = models.BooleanField(default=False)
    # The stored definition in input camelCase with every secret replaced by the marker.
    definition = models.JSONField()
    # The auth object with its real secrets, encrypted with FIELD_ENCRYPTION_KEY.
    auth_ciphertext = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = RegistryModelQuerySet.as_manager()

    class Meta:
        ordering = ["registry_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "registry_id"], name="uniq_registry_model_per_org"
            )
        ]

    def __str__(self) -> str:
        return f"{self.registry_id} ({self.org.slug})"

    @property
    def health_key(self) -> str:
        return f"db:{self.pk}"

    def set_auth(self, auth: dict[str, Any]) -> None:
        self.auth_ciphertext = crypto.encrypt(json.dumps(auth, separators=(",", ":")))

    def get_auth(self) -> dict[str, Any]:
        """The auth object with its real secrets: only for building upstream requests."""
        return json.loads(crypto.decrypt(self.auth_ciphertext))

    def set_definition(self, full: dict[str, Any]) -> None:
        """Store a validated definition (with real secrets): secrets go to the cipher column."""
        self.set_auth(full["auth"])
        self.definition = redact_definition(full)
        self.provider = full["provider"]
        self.upstream_model = full["modelId"]
        self.api_format = full["apiFormat"]
        self.display_name = full.get("displayName") or ""
        self.base_url = full.get("baseUrl") or ""
        self.context_window = full.get("contextWindow")
        self.rpm = full.get("rpm")
        self.hidden = bool(full.get("hidden"))

    def full_definition(self) -> dict[str, Any]:
        """The definition with its real secrets (never for a response)."""
        return {**self.definition, "auth": self.get_auth()}


class ModelAlias(models.Model):
    """Another name for an org model; aliases share the id namespace of the org."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="+")
    alias = models.CharField(max_length=200)
    model = models.ForeignKey(RegistryModel, on_delete=models.CASCADE, related_name="alias_rows")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org", "alias"], name="uniq_alias_per_org")]

    def __str__(self) -> str:
        return f"{self.alias} -> {self.model.registry_id}"


class ClusterGrant(models.Model):
    """An org may use this operator (YAML) model."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="cluster_grants")
    model_id = models.CharField(max_length=200)
    granted_by = models.CharField(max_length=300)
    granted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model_id"]
        constraints = [models.UniqueConstraint(fields=["org", "model_id"], name="uniq_grant")]

    def __str__(self) -> str:
        return f"{self.org.slug}: {self.model_id}"


class AutoModel(models.Model):
    """The org's choice for `model: "auto"` on one endpoint."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="auto_models")
    endpoint = models.CharField(max_length=32)
    model_id = models.CharField(max_length=200)
    set_by = models.CharField(max_length=300)
    set_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["endpoint"]
        constraints = [models.UniqueConstraint(fields=["org", "endpoint"], name="uniq_auto_model")]

    def __str__(self) -> str:
        return f"{self.org.slug}: {self.endpoint} -> {self.model_id}"


class HealthStatus(models.Model):
    """The latest probe of a model: `db:<pk>` for org models, `yaml:<id>` for operator models."""

    target = models.CharField(max_length=220, unique=True)
    is_available = models.BooleanField(default=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "health statuses"

    def __str__(self) -> str:
        return f"{self.target}: {'up' if self.is_available else 'down'}"


class HealthCheckResult(models.Model):
    """One probe of a model, kept as history (the newest HEALTH_HISTORY_LENGTH per model)."""

    target = models.CharField(max_length=220)
    is_available = models.BooleanField()
    checked_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    trigger = models.CharField(max_length=16, default="manual")  # manual, periodic, preflight

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [models.Index(fields=["target", "-checked_at"], name="health_history")]

    def __str__(self) -> str:
        return f"{self.target} {self.checked_at:%H:%M:%S} {'up' if self.is_available else 'down'}"
