"""Filters shared by the rollback app's pages and API."""
