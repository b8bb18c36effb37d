"""`{{ n|thousands }}`: 12345 → "12,345". Much cheaper than `floatformat:"0g"` (which goes through
the localisation machinery) on pages that print hundreds of numbers."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def thousands(value: Any) -> str:
    if value is None or value == "":
        return ""
    try:
        return f"{round(float(value)):,}"
    except (TypeError, ValueError):
        return str(value)
