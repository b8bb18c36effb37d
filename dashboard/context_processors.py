"""Template context for every dashboard page: the navigation and the org switcher.

Both are lazy, so pages that do not show them (the Django admin, API errors) run no query.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from dashboard.nav import nav_links, switcher


def dashboard(request: HttpRequest) -> dict[str, Any]:
    return {
        "nav_links": SimpleLazyObject(lambda: nav_links(request)),
        "org_switcher": SimpleLazyObject(lambda: switcher(request)),
    }
