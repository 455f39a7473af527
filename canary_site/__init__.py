"""Canary's project package: settings, root URLs, the Celery app and shared infrastructure."""

from canary_site.celery import app as celery_app

__all__ = ["celery_app"]
