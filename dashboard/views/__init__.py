"""The HTML pages of the dashboard: one module per page group (see dashboard/pages.py)."""
