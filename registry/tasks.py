"""Celery tasks of the registry: thin shells over `registry.health`."""

from __future__ import annotations

from celery import shared_task

from registry import health


@shared_task(ignore_result=True)
def sweep_health() -> int:
    """Probe every model whose periodic health check is due (run by beat)."""
    return health.sweep()
