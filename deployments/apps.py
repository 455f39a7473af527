"""App config of the deployments app."""

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        from canary_site.metrics import register_collector
        from deployments.metrics import collector

        # /metrics reads this app's state from the database at scrape time.
        register_collector(collector)

        from django.db.models.signals import pre_delete

        from deployments.signals import keep_policies_in_use
        from health.models import HealthPolicy

        pre_delete.connect(keep_policies_in_use, sender=HealthPolicy, dispatch_uid="keep-policies")
