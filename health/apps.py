"""App config of the health app."""

from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Health"

    def ready(self) -> None:
        from canary_site.metrics import register_collector
        from health.metrics import collector

        # /metrics reads this app's state from the database at scrape time.
        register_collector(collector)
