"""Who may see which org: the one scoping door of every dashboard view.

An org page is reached through `get_org_for_user(request, slug)`, which 404s for an org the
user is not a member of (superusers are admins of every org), so another org's pages are not
even known to exist. Org admins may change things; members may only look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django_htmx.middleware import HtmxDetails

from orgs.auth import Caller
from orgs.models import Membership, Org, Role

SESSION_ORG_KEY = "dashboard_org"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails
    user: AbstractBaseUser | AnonymousUser
    org_access: OrgAccess


@dataclass(frozen=True)
class OrgAccess:
    """The org of a page and what the signed-in user may do in it."""

    org: Org
    role: str
    caller: Caller

    @property
    def is_admin(self) -> bool:
        return self.caller.is_admin

    @property
    def actor(self) -> str:
        """Recorded by the services in the audit trail (`user:<username>`)."""
        return self.caller.actor


def orgs_for_user(user: Any) -> QuerySet[Org]:
    """The orgs a user may open: their memberships, or every org for a superuser."""
    if user.is_superuser:
        return Org.objects.all()
    return Org.objects.filter(memberships__user=user)


def get_org_for_user(request: HtmxHttpRequest, slug: str) -> OrgAccess:
    """The org named in the URL, or 404 when the user is not one of its members."""
    user: Any = request.user
    if user.is_superuser:
        org = get_object_or_404(Org, slug=slug)
        role = Role.ADMIN
    else:
        membership = get_object_or_404(
            Membership.objects.select_related("org"), user=user, org__slug=slug
        )
        org, role = membership.org, membership.role
    access = OrgAccess(org=org, role=role, caller=Caller.for_user(user, org, role))
    # The org last opened is the "current org" that `/` and the switcher start from.
    if request.session.get(SESSION_ORG_KEY) != org.slug:
        request.session[SESSION_ORG_KEY] = org.slug
    request.org_access = access
    return access


def get_admin_org_for_user(request: HtmxHttpRequest, slug: str) -> OrgAccess:
    """Like `get_org_for_user`, and 403 for members: they may look but not change."""
    access = get_org_for_user(request, slug)
    if not access.is_admin:
        raise PermissionDenied("This needs an org admin.")
    return access


def require_cluster_admin(request: HtmxHttpRequest) -> None:
    """Cluster-wide pages (grants) are for superusers, the dashboard's cluster admins."""
    if not getattr(request.user, "is_superuser", False):
        raise PermissionDenied("This page is for cluster admins only.")


def wants_fragment(request: HtmxHttpRequest) -> bool:
    """Whether to answer with a fragment: an htmx request, but not a history restore (which
    needs the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request
