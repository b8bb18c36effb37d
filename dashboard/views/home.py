"""Sign-in, the start page and the org switcher."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from dashboard.nav import ORG_SECTIONS
from dashboard.views.access import SESSION_ORG_KEY, HtmxHttpRequest, orgs_for_user

# Django's own views: they check `?next=` with url_has_allowed_host_and_scheme (so an
# off-site `next` is ignored), rotate the session and CSRF token, and logout is POST-only.
login = auth_views.LoginView.as_view(
    template_name="registration/login.html", redirect_authenticated_user=True, next_page="/"
)
logout = auth_views.LogoutView.as_view(next_page="/login")


@require_GET
@login_required
def home(request: HtmxHttpRequest) -> HttpResponse:
    """The current org's models page, or a page saying there is no org yet."""
    orgs = orgs_for_user(request.user).order_by("slug")
    slug = request.session.get(SESSION_ORG_KEY)
    if not (slug and orgs.filter(slug=slug).exists()):
        slug = orgs.values_list("slug", flat=True).first()
    if slug is None:
        return render(request, "dashboard/no_org.html", {"nav_section": ""})
    return redirect("dashboard:model-list", slug=slug)


@require_GET
@login_required
def switch_org(request: HtmxHttpRequest) -> HttpResponse:
    """The org switcher's target: the same kind of page in the chosen org."""
    slug = request.GET.get("org", "")
    if not orgs_for_user(request.user).filter(slug=slug).exists():
        raise Http404("No such org.")
    url_name = ORG_SECTIONS.get(request.GET.get("section", ""), "dashboard:model-list")
    try:
        url = reverse(url_name, kwargs={"slug": slug})
    except NoReverseMatch:  # a section whose page does not exist (yet)
        url = reverse("dashboard:model-list", kwargs={"slug": slug})
    return redirect(url)
