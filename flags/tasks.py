"""Celery tasks of the flags app: thin wrappers around its services."""

from celery import shared_task

from flags import services


@shared_task(ignore_result=True)
def flag_exposures_prune() -> int:
    """Delete exposure counts past their retention; safe to run any number of times."""
    return services.flag_exposures_prune()
