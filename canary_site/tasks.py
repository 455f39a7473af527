"""Celery tasks of the site itself."""

from celery import shared_task

from canary_site import services


@shared_task(ignore_result=True)
def heartbeat_record(name: str = "beat") -> None:
    """Scheduled by beat on every control tick, so the dashboard can tell the loop is alive."""
    services.heartbeat_record(name=name)
