"""The Django project package; loads the Celery app so that ``shared_task`` binds to it."""

from __future__ import annotations

from dashboard.celery import app as celery_app

__all__ = ("celery_app",)
