from __future__ import annotations

from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "orgs"
    verbose_name = "Orgs and API keys"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from orgs import generation
        from orgs.models import ApiKey, Membership, Org

        def bump(**kwargs: object) -> None:
            generation.bump()

        # Writes that bypass the services (the Django admin) still invalidate hot-path caches.
        for model in (Org, ApiKey, Membership):
            post_save.connect(bump, sender=model, dispatch_uid=f"gen-save-{model.__name__}")
            post_delete.connect(bump, sender=model, dispatch_uid=f"gen-del-{model.__name__}")
