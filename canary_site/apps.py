"""App config for the project package, which also owns the audit trail and API tokens."""

from django.apps import AppConfig


class CanarySiteConfig(AppConfig):
    name = "canary_site"
    verbose_name = "Canary"

    def ready(self) -> None:
        from canary_site import metrics, roles, schema  # noqa: F401  (schema registers itself)

        roles.connect_signals()
        metrics.connect_signals()
