from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orgs.errors import ServiceError
from orgs.models import Org, Role
from orgs.services import issue_api_key


class Command(BaseCommand):
    help = (
        "Issue an API key for an org. The raw key is printed once, alone on the last line of "
        "stdout; only its hash is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org_slug")
        parser.add_argument("--role", choices=Role.values, default=Role.MEMBER)
        parser.add_argument("--cluster-admin", action="store_true")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        org = Org.objects.filter(slug=options["org_slug"]).first()
        if org is None:
            raise CommandError(f"org {options['org_slug']!r} not found")
        try:
            key, raw = issue_api_key(
                org,
                role=options["role"],
                cluster_admin=options["cluster_admin"],
                name=options["name"],
                actor="cli",
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        flags = " cluster-admin" if key.cluster_admin else ""
        self.stdout.write(
            f"issued {key.role}{flags} key {key.prefix}… for {org.slug}; store it now:"
        )
        self.stdout.write(raw)
