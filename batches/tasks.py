"""Celery tasks of files and batches: thin shells over `batches.runner`. They take ids, are
enqueued after commit, acknowledge late and are safe to run twice (the batch lease decides)."""

from __future__ import annotations

from celery import shared_task

from batches import runner


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_batch(batch_pk: int) -> str:
    """Validate, run and finalize one batch (or as much of it as one time slice allows)."""
    return runner.run_batch(batch_pk)


@shared_task(ignore_result=True)
def reconcile_batches() -> int:
    """Re-enqueue active batches that no live worker holds (run by beat)."""
    return runner.reconcile()
