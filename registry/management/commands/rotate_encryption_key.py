from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from registry import crypto
from registry.models import RegistryModel


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored provider secret with the first key of FIELD_ENCRYPTION_KEY. "
        "Put the new key first, keep the old one after it, run this, then remove the old key. "
        "All or nothing: if any secret cannot be decrypted, nothing is changed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        count = 0
        undecryptable: list[str] = []
        with transaction.atomic():
            rows = (
                RegistryModel.objects.select_for_update(of=("self",))
                .select_related("org")
                .only("pk", "registry_id", "org__slug", "auth_ciphertext")
                .order_by("pk")
            )
            for model in rows:
                try:
                    model.auth_ciphertext = crypto.rotate(model.auth_ciphertext)
                except ImproperlyConfigured:
                    undecryptable.append(f"{model.registry_id} ({model.org.slug})")
                    continue
                if not undecryptable:  # after the first failure, only look for more of them
                    model.save(update_fields=["auth_ciphertext"])
                    count += 1
            if undecryptable:
                # Raising inside the transaction rolls back the rows re-encrypted so far.
                raise CommandError(
                    f"nothing was changed: the secrets of {len(undecryptable)} model(s) cannot be "
                    f"decrypted with any key of FIELD_ENCRYPTION_KEY: {', '.join(undecryptable)}. "
                    "Add the key they were encrypted with (after the new one) and run this again."
                )
        self.stdout.write(f"re-encrypted the secrets of {count} model(s) with the primary key")
