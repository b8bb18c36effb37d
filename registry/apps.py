from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # Validate the operator's YAML at start: a broken file stops the process with a message
        # naming the file, the model and the field.
        from registry.cluster import get_cluster_registry

        get_cluster_registry()
