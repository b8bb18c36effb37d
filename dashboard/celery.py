"""The Celery application: configured from Django settings (the ``CELERY_`` namespace).

Workers start with ``celery -A dashboard worker`` (see the Makefile). Tasks are found in each
installed app's ``tasks.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The folders that the filesystem transport needs; it creates none of them itself.
_FILESYSTEM_FOLDER_OPTIONS = ("data_folder_in", "data_folder_out", "processed_folder")


@app.on_after_configure.connect
def _prepare_local_state(sender: Celery, source: Any, **kwargs: Any) -> None:
    """Create the filesystem broker's folders and keep beat's schedule under ``var/``."""
    from django.conf import settings

    var_dir = Path(getattr(settings, "VAR_DIR", Path.cwd() / "var"))
    if source.beat_schedule_filename == "celerybeat-schedule":  # Celery's default: the cwd
        var_dir.mkdir(parents=True, exist_ok=True)
        source.beat_schedule_filename = str(var_dir / "celerybeat-schedule")

    if not str(source.broker_url or "").startswith("filesystem://"):
        return
    options = dict(source.broker_transport_options or {})
    folders = [options[key] for key in _FILESYSTEM_FOLDER_OPTIONS if options.get(key)]
    if "control_folder" not in options:
        # kombu's default is "control" relative to the cwd: keep it beside the data folders.
        base = Path(folders[0]).parent if folders else var_dir / "broker"
        options["control_folder"] = str(base / "control")
        source.broker_transport_options = options
    for folder in [*folders, options["control_folder"]]:
        Path(folder).mkdir(parents=True, exist_ok=True)


def _close_old_connections(**kwargs: Any) -> None:
    """Drop database connections that are broken or past CONN_MAX_AGE around each task."""
    from django.db import close_old_connections

    close_old_connections()


task_prerun.connect(_close_old_connections, weak=False, dispatch_uid="dashboard.celery.prerun")
task_postrun.connect(_close_old_connections, weak=False, dispatch_uid="dashboard.celery.postrun")
