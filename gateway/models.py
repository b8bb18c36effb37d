"""One row per gateway request: who called which model, tokens, timings and outcome."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from orgs.models import ApiKey, Org


class UsageRecord(models.Model):
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    end_user = models.CharField(max_length=256, blank=True)
    endpoint = models.CharField(max_length=32)
    requested_model = models.CharField(max_length=256)
    model_id = models.CharField(max_length=200, blank=True, db_index=True)
    rerouted_from = models.CharField(max_length=200, blank=True)
    reroute_reason = models.CharField(max_length=32, blank=True)
    stream = models.BooleanField(default=False)
    cached = models.BooleanField(default=False, help_text="Served from the response cache.")
    status_code = models.PositiveSmallIntegerField()
    error = models.CharField(max_length=500, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["org", "created_at"], name="usage_org_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.model_id or self.requested_model} {self.status_code}"
