"""Celery tasks of the rollback app: thin wrappers around its services."""
