"""Celery tasks of the routing app: thin wrappers around its services."""
