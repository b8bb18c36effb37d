"""Files (api-contract.md §7), batches (§9) and batch items: one row per input line, the unit of
idempotent work that workers run and record exactly once."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.utils import timezone

from orgs.models import ApiKey, Org

if TYPE_CHECKING:
    from orgs.auth import Caller


class Purpose(models.TextChoices):
    ASSISTANTS = "assistants"
    BATCH = "batch"
    FINE_TUNE = "fine-tune"
    VISION = "vision"
    USER_DATA = "user_data"
    EVALS = "evals"
    BATCH_OUTPUT = "batch_output"  # files written by batches; never uploaded


UPLOAD_PURPOSES = (
    Purpose.ASSISTANTS,
    Purpose.BATCH,
    Purpose.FINE_TUNE,
    Purpose.VISION,
    Purpose.USER_DATA,
    Purpose.EVALS,
)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


class FileQuerySet(models.QuerySet["File"]):
    def for_caller(self, caller: Caller) -> FileQuerySet:
        """The one scoping door: the caller's org and end user (X-On-Behalf-Of), never deleted
        files. Without the header only org-level files (end_user '') are visible."""
        return self.filter(
            org=caller.org, end_user=caller.on_behalf_of or "", deleted_at__isnull=True
        )


class File(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=new_file_id)
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="+")
    end_user = models.CharField(max_length=256, blank=True, help_text="X-On-Behalf-Of, or ''.")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    bytes = models.BigIntegerField()
    storage_name = models.CharField(max_length=300, help_text="Name in the file storage.")
    content_type = models.CharField(max_length=100)
    line_count = models.PositiveIntegerField(
        null=True, blank=True, help_text="Non-empty JSONL lines (batch files)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Deleted files keep their row (batches still name them) but lose their content.
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-public_id"]
        indexes = [
            models.Index(fields=["org", "end_user", "created_at"], name="file_owner_time"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.filename} ({self.purpose})"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
)
TERMINAL_STATUSES = (
    BatchStatus.FAILED,
    BatchStatus.COMPLETED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)


class BatchQuerySet(models.QuerySet["Batch"]):
    def for_caller(self, caller: Caller) -> BatchQuerySet:
        return self.filter(org=caller.org, end_user=caller.on_behalf_of or "")


class Batch(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=new_batch_id)
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="+")
    end_user = models.CharField(max_length=256, blank=True)
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The creator: lines run with this key's rights and limits.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The dashboard user who created it (when no API key did).",
    )
    # RESTRICT (not PROTECT) so that deleting an org, which cascades to both, still works.
    input_file = models.ForeignKey(File, on_delete=models.RESTRICT, related_name="+")
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=8, default="24h")
    status = models.CharField(
        max_length=16, choices=BatchStatus.choices, default=BatchStatus.VALIDATING
    )
    metadata = models.JSONField(null=True, blank=True)
    errors = models.JSONField(null=True, blank=True)
    output_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    items_ready = models.BooleanField(
        default=False, help_text="Every input line has its BatchItem (validation passed)."
    )

    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    # The lease: one worker owns an active batch while its heartbeat is fresh.
    worker_id = models.CharField(max_length=120, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time a run was sent to the broker."
    )

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-public_id"]
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["org", "end_user", "created_at"], name="batch_owner_time"),
            models.Index(fields=["status"], name="batch_status"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ItemStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class BatchItem(models.Model):
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="items")
    line = models.PositiveIntegerField(help_text="1-based line number in the input file.")
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default="pending")
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Times a worker started this line (a crash mid-line counts)."
    )
    request_id = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True, help_text="The response body.")
    error = models.JSONField(null=True, blank=True, help_text="{code, message}.")
    lease_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "line"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batchitem_custom_id"),
            models.UniqueConstraint(fields=["batch", "line"], name="batchitem_line"),
        ]
        indexes = [models.Index(fields=["batch", "status", "line"], name="batchitem_todo")]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.line} {self.custom_id} ({self.status})"
