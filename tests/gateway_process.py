"""The command line that serves this project as README says (`uvicorn dashboard.asgi:application`),
for tests and benchmarks that run the gateway in its own process. Standard library only, so that
scripts can import it before Django is set up."""

from __future__ import annotations

import sys


def gateway_command(port: int, *options: str) -> list[str]:
    """`python -m uvicorn dashboard.asgi:application` on 127.0.0.1:`port`, plus `options`."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "dashboard.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
    ]
