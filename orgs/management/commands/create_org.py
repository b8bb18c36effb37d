from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orgs.errors import ServiceError
from orgs.services import create_org


class Command(BaseCommand):
    help = "Create an organisation (tenant). SLUG is its public id, e.g. org-acme."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="", help="Display name (defaults to the slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            org = create_org(options["slug"], options["name"], actor="cli")
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"created org {org.slug} ({org.name})")
