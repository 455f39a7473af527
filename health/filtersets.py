"""Filters shared by the health app's pages and API."""
