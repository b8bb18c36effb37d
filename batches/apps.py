from __future__ import annotations

from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Files and batches"

    def ready(self) -> None:
        # A worker asked to stop (warm shutdown) finishes the lines in flight, then hands its
        # batches back to the queue instead of holding the shutdown until a slice ends.
        from celery.signals import worker_shutting_down

        from batches import runner

        worker_shutting_down.connect(
            runner.request_stop, weak=False, dispatch_uid="batches.runner.stop"
        )
