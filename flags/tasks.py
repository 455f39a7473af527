"""Celery tasks of the flags app: thin wrappers around its services."""
