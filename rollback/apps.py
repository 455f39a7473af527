"""App config of the rollback app."""

from django.apps import AppConfig


class RollbackConfig(AppConfig):
    name = "rollback"
    verbose_name = "Rollback"
