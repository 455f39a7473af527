"""Celery tasks of the health app: thin wrappers around its services."""
