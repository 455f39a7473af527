"""Celery tasks of the deployments app: thin wrappers around its services."""
