"""Celery tasks of the site itself."""

from celery import shared_task

from canary_site import services


@shared_task(ignore_result=True)
def heartbeat_record(name: str = "beat", beat: str = "") -> None:
    """Scheduled by beat on every control tick, so the dashboard can tell the loop is alive and
    which beat drives it: the beat adds its own ``hostname:pid`` as ``beat`` when it sends it
    (``canary_site.celery.IdentifyingScheduler``)."""
    services.heartbeat_record(name=name, identity=beat)
