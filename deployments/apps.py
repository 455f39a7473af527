"""App config of the deployments app."""

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        # Connects the receivers that tell people a deployment's news.
        from deployments import notifications  # noqa: F401
