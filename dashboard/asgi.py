"""ASGI entry point: ``uvicorn dashboard.asgi:application``.

`/api/...` goes to the JSON API's lean handler (`dashboard.apihandler`), everything else (pages,
admin, static files in development) to Django's standard handler with the full middleware.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

pages_application = get_asgi_application()

from batches.asgi import UploadSizeGuard  # noqa: E402  (needs the apps loaded)
from dashboard.apihandler import ApiASGIHandler  # noqa: E402

api_application = UploadSizeGuard(ApiASGIHandler())


async def application(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/api/"):
        await api_application(scope, receive, send)
    else:
        await pages_application(scope, receive, send)
