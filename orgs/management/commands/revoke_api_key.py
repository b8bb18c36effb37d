from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orgs.errors import ServiceError
from orgs.services import find_key, revoke_api_key


class Command(BaseCommand):
    help = "Revoke an API key, given the raw key or its visible prefix (e.g. mk_AbCdEfGhI)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_or_prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = revoke_api_key(find_key(options["key_or_prefix"]), actor="cli")
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"revoked key {key.prefix}… of {key.org.slug}")
