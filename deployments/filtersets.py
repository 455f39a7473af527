"""Filters shared by the deployments app's pages and API."""
