from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from registry import crypto
from registry.models import RegistryModel


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored provider secret with the first key of FIELD_ENCRYPTION_KEY. "
        "Put the new key first, keep the old one after it, run this, then remove the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        count = 0
        with transaction.atomic():
            for model in RegistryModel.objects.select_for_update().only("pk", "auth_ciphertext"):
                model.auth_ciphertext = crypto.rotate(model.auth_ciphertext)
                model.save(update_fields=["auth_ciphertext"])
                count += 1
        self.stdout.write(f"re-encrypted the secrets of {count} model(s) with the primary key")
