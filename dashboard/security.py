"""Security headers that Django's own middleware does not send: the Content-Security-Policy.

Django's SecurityMiddleware already sends X-Content-Type-Options, Referrer-Policy,
Cross-Origin-Opener-Policy and (over HTTPS in production) Strict-Transport-Security, and
XFrameOptionsMiddleware sends X-Frame-Options. This module adds:

- for the pages, a CSP that allows only this origin plus a per-request nonce for scripts
  (`request.csp_nonce`, `{{ csp_nonce }}` in templates). The pages have no inline script, style
  or event handler (htmx runs with `includeIndicatorStyles: false` and `allowEval: false`), so
  nothing else is needed;
- for the JSON API (`dashboard.apihandler`, which runs no page middleware), a fixed list of
  headers with a CSP that allows nothing at all: a JSON body is never a document.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Besides the CSP, what SecurityMiddleware and XFrameOptionsMiddleware send with every page.
API_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", API_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


def new_nonce() -> str:
    """128 random bits, base64url: a valid CSP nonce-source."""
    return secrets.token_urlsafe(16)


def page_csp(nonce: str) -> str:
    return PAGE_CSP.format(nonce=nonce)


def hsts_value() -> str | None:
    """The Strict-Transport-Security value SecurityMiddleware sends (None when HSTS is off)."""
    seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
    if not seconds:
        return None
    value = f"max-age={seconds}"
    if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
        value += "; includeSubDomains"
    if getattr(settings, "SECURE_HSTS_PRELOAD", False):
        value += "; preload"
    return value


def _is_debug_page(response: HttpResponseBase) -> bool:
    """Django's technical 404/500 pages (DEBUG only) are made of inline scripts and styles."""
    return settings.DEBUG and response.status_code in (404, 500)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """A fresh nonce per request and the pages' CSP on every response that lacks one."""

    def process_request(self, request: HttpRequest) -> None:
        request.csp_nonce = new_nonce()  # type: ignore[attr-defined]

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if "Content-Security-Policy" in response.headers or _is_debug_page(response):
            return response
        if request.path.startswith("/api/"):  # the API under the page handler (test client)
            response.headers["Content-Security-Policy"] = API_CSP
            return response
        nonce = getattr(request, "csp_nonce", None) or new_nonce()
        response.headers["Content-Security-Policy"] = page_csp(nonce)
        return response


def csp_nonce(request: HttpRequest) -> dict[str, Any]:
    """Context processor: `{{ csp_nonce }}` for `<script nonce=…>` and `<style nonce=…>`."""
    return {"csp_nonce": getattr(request, "csp_nonce", "")}
