from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # Validate the operator's YAML at start: a broken file stops the process with one line
        # naming the file, the model and the field, and no traceback (like a bad secret in
        # dashboard/settings.py).
        from registry.cluster import ClusterRegistryError, get_cluster_registry

        try:
            get_cluster_registry()
        except ClusterRegistryError as exc:
            problem = " ".join(str(exc).split())  # YAML parser messages span several lines
            raise SystemExit(f"Configuration error: CLUSTER_REGISTRY_PATH {problem}") from None

        from django.db.models.signals import post_delete, post_save

        from orgs import generation
        from registry.models import AutoModel, ClusterGrant, ModelAlias, RegistryModel

        def bump(**kwargs: object) -> None:
            generation.bump()

        # Writes that bypass the services (the Django admin) still invalidate hot-path caches.
        for model in (RegistryModel, ModelAlias, ClusterGrant, AutoModel):
            post_save.connect(bump, sender=model, dispatch_uid=f"gen-save-{model.__name__}")
            post_delete.connect(bump, sender=model, dispatch_uid=f"gen-del-{model.__name__}")
