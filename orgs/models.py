"""Tenants, their members, API keys and the audit trail."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

SLUG_RE = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
KEY_PREFIX = "mk_"
# Characters of the raw key kept in clear to recognise it (the rest is only hashed).
VISIBLE_PREFIX_LEN = 12


class Role(models.TextChoices):
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"


class Org(models.Model):
    slug = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(SLUG_RE, "lowercase letters, digits and dashes")],
        help_text="Public id used in URLs, e.g. org-acme.",
    )
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "org"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"


def hash_key(raw: str) -> str:
    """API keys are 256-bit random tokens, so a plain SHA-256 is a sound one-way hash."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def for_org(self, org: Org) -> ApiKeyQuerySet:
        return self.filter(org=org)

    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LEN, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    cluster_admin = models.BooleanField(default=False)
    created_by = models.CharField(max_length=256, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.org.slug}, {self.role})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def actor(self) -> str:
        """How this key is named in audit records and `granted_by`/`set_by` fields."""
        return f"key:{self.prefix}"

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """A new raw key with its visible prefix and hash."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        return raw, raw[:VISIBLE_PREFIX_LEN], hash_key(raw)


class AuditEvent(models.Model):
    """Who changed what, when and in which org. Secrets are never recorded."""

    org = models.ForeignKey(Org, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    org_slug = models.CharField(max_length=64, blank=True, db_index=True)
    actor = models.CharField(max_length=300)
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"


class ConfigGeneration(models.Model):
    """One row: a counter bumped after every config write (used when Redis is not configured)."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"generation {self.value}"
