"""Filters shared by the routing app's pages and API."""
