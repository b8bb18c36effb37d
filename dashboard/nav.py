"""The dashboard's navigation: one list, so that a new page is one line here.

An item whose URL name does not exist (yet) is shown as a muted placeholder, so pages another
engineer adds (Playground, Batches, Usage) appear once their URL is registered under that name.
Org items take the current org's slug as the `slug` URL argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse


@dataclass(frozen=True)
class NavItem:
    key: str  # matched against the page's `nav_section`
    label: str
    url_name: str
    org: bool = True  # the URL takes the current org's slug
    admin_only: bool = False  # org admins (and superusers)
    superuser_only: bool = False


NAV_ITEMS: list[NavItem] = [
    NavItem("models", "Models", "dashboard:model-list"),
    NavItem("grants", "Grants", "dashboard:grant-list", org=False, superuser_only=True),
    NavItem("auto", "Auto models", "dashboard:auto-list"),
    NavItem("health", "Health", "dashboard:health-list"),
    NavItem("keys", "API keys", "dashboard:key-list", admin_only=True),
    NavItem("playground", "Playground", "dashboard:playground"),
    NavItem("batches", "Batches", "dashboard:batch-list"),
    NavItem("usage", "Usage", "dashboard:usage", admin_only=True),
    NavItem("activity", "Activity", "dashboard:activity", admin_only=True),
    NavItem("docs", "API", "dashboard:api-docs", org=False),
]
# Switching org keeps the user on the same kind of page when it is one of these.
ORG_SECTIONS: dict[str, str] = {item.key: item.url_name for item in NAV_ITEMS if item.org}


@dataclass(frozen=True)
class NavLink:
    key: str
    label: str
    url: str | None  # None: a placeholder for a page that does not exist yet


def _current(request: HttpRequest) -> tuple[str | None, bool]:
    """The current org's slug and whether the user is its admin."""
    from dashboard.views.access import SESSION_ORG_KEY

    access = getattr(request, "org_access", None)
    if access is not None:
        return access.org.slug, access.is_admin
    slug = request.session.get(SESSION_ORG_KEY) if hasattr(request, "session") else None
    if not slug:
        return None, False
    user: Any = request.user
    if user.is_superuser:
        return slug, True
    from orgs.models import Membership, Role

    role = (
        Membership.objects.filter(user=user, org__slug=slug).values_list("role", flat=True).first()
    )
    if role is None:
        return None, False
    return slug, role == Role.ADMIN


def nav_links(request: HttpRequest) -> list[NavLink]:
    user: Any = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    slug, is_admin = _current(request)
    links = []
    for item in NAV_ITEMS:
        if item.superuser_only and not user.is_superuser:
            continue
        if item.admin_only and not is_admin:
            continue
        if item.org and slug is None:
            continue
        try:
            url = reverse(item.url_name, kwargs={"slug": slug} if item.org else None)
        except NoReverseMatch:
            url = None
        links.append(NavLink(item.key, item.label, url))
    return links


def switcher(request: HttpRequest) -> dict[str, Any]:
    """The orgs the user may switch to (capped: superusers may see very many)."""
    from dashboard.views.access import orgs_for_user

    user: Any = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"orgs": [], "current": None}
    slug, _ = _current(request)
    return {"orgs": list(orgs_for_user(user).order_by("slug")[:200]), "current": slug}
